"""Steps to forget: vmapped independent copies against a plain per-sample loop; caps; resume."""

from __future__ import annotations

import copy
import importlib
import json
import math

import pandas as pd
import pytest
import torch

from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.data.tokenize import collate, encode_samples, pad_id
from unlearnscope.models.logprobs import mean_answer_nll
from unlearnscope.unlearning.methods import get_method
from unlearnscope.unlearning.steps_to_forget import StepsToForgetConfig, steps_to_forget

SAMPLES = toy_samples()[:4]
# the package exports a function of the same name as this module
stf = importlib.import_module("unlearnscope.unlearning.steps_to_forget")


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def plain_steps(model, tokenizer, samples, config: StepsToForgetConfig
                ) -> list[tuple[int, float, float]]:
    """Independent reference: one fresh model copy, AdamW and standard autograd per sample.
    Per sample: (steps, final loss, interpolated steps by hand from the loss trajectory)."""
    method = get_method(config.method, **config.method_options)
    out = []
    for encoded in encode_samples(tokenizer, samples).samples:
        copy_model = copy.deepcopy(model)
        reference = copy.deepcopy(model).requires_grad_(False)
        method.prepare(copy_model)
        optimizer = torch.optim.AdamW([p for p in copy_model.parameters() if p.requires_grad],
                                      lr=config.lr, weight_decay=config.weight_decay)
        batch = collate([encoded], pad_id(tokenizer))
        with torch.no_grad():
            before = mean_answer_nll(copy_model(**batch).logits, batch["labels"]).item()
        result = (config.max_steps, math.nan, float(config.max_steps))
        previous = before
        for step in range(1, config.max_steps + 1):
            method.loss(copy_model, batch, None, reference).total.backward()
            torch.nn.utils.clip_grad_norm_(copy_model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                loss = mean_answer_nll(copy_model(**batch).logits, batch["labels"]).item()
            result = (config.max_steps, loss, float(config.max_steps))
            if math.exp(-loss) < config.tau * math.exp(-before):
                # the loss crosses before + log(1/tau) between step - 1 and step
                crossing = before + math.log(1 / config.tau)
                result = (step, loss, step - 1 + (crossing - previous) / (loss - previous))
                break
            previous = loss
        out.append(result)
    return out


@pytest.mark.parametrize("method", ["grad_ascent", "npo"])
def test_vmapped_copies_match_a_plain_loop_per_sample(tokenizer, method):
    model = toy_llama(tokenizer)
    config = StepsToForgetConfig(method=method, lr=2e-3, max_steps=12, copies=4)
    table = steps_to_forget(model, tokenizer, SAMPLES, config=config)
    expected = plain_steps(toy_llama(tokenizer), tokenizer, SAMPLES, config)
    assert table["steps_to_forget"].tolist() == [s for s, _, _ in expected]
    assert table["loss_final"].tolist() == pytest.approx([v for _, v, _ in expected], rel=1e-4)
    assert table["interpolated_steps"].tolist() == pytest.approx([t for _, _, t in expected],
                                                                 abs=1e-3)
    steps = table["steps_to_forget"]
    assert ((table["interpolated_steps"] >= steps - 1) & (table["interpolated_steps"] < steps)
            | table["capped"]).all()
    assert table["sample_id"].tolist() == [s.id for s in SAMPLES]
    forgotten = table[~table["capped"]]
    assert len(forgotten) > 0
    assert (forgotten["prob_final"] < 0.5 * forgotten["prob_before"]).all()


def test_interpolated_steps_rank_samples_the_count_ties(tokenizer):
    """At this learning rate every sample is forgotten at the same step: the count ties them
    all, the interpolated step does not."""
    config = StepsToForgetConfig(method="grad_ascent", lr=2e-3, max_steps=12, copies=4)
    table = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config)
    assert table["steps_to_forget"].nunique() == 1 and not table["capped"].any()
    assert table["interpolated_steps"].nunique() == len(SAMPLES)
    assert (table["interpolated_steps"] >= table["steps_to_forget"] - 1).all()


def test_chunking_does_not_change_any_sample(tokenizer):
    config = StepsToForgetConfig(method="grad_ascent", lr=2e-3, max_steps=6, copies=1)
    one = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config)
    config.copies = 3
    three = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config)
    pd.testing.assert_frame_equal(one, three, rtol=1e-5)


def test_capped_samples_report_the_cap(tokenizer):
    config = StepsToForgetConfig(method="grad_ascent", lr=1e-7, max_steps=3, copies=4)
    table = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config)
    assert table["capped"].all() and (table["steps_to_forget"] == 3).all()
    assert (table["interpolated_steps"] == 3.0).all()
    assert table["loss_final"].tolist() == pytest.approx(table["loss_before"].tolist(), rel=1e-3)


def test_rmu_with_retain_samples_trains_only_its_layers(tokenizer):
    model = toy_llama(tokenizer)
    config = StepsToForgetConfig(method="rmu", method_options={"layer": 0, "steering_coeff": 5.0},
                                 lr=1e-2, max_steps=2, copies=2)
    table = steps_to_forget(model, tokenizer, SAMPLES[:2], retain_samples=toy_samples()[4:],
                            config=config)
    assert (table["loss_final"] != table["loss_before"]).all()
    fresh = toy_llama(tokenizer)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the copies train; the model itself is untouched


def test_rmu_auto_steering_coeff_is_measured_on_the_samples(tokenizer, tmp_path):
    """steering_coeff=auto: scale x the mean block-output norm over the samples' answer
    tokens, measured before any copy trains, and recorded in config.json."""
    config = StepsToForgetConfig(method="rmu", lr=1e-2, max_steps=2, copies=2, method_options={
        "layer": 0, "steering_coeff": "auto", "steering_scale": 3.0})
    table = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES[:2], config=config,
                            out_dir=tmp_path)
    assert (table["loss_final"] != table["loss_before"]).all()
    norms = []
    model = toy_llama(tokenizer)
    with torch.no_grad():
        for encoded in encode_samples(tokenizer, SAMPLES[:2]).samples:
            batch = collate([encoded], pad_id(tokenizer))
            hidden = model(**batch, output_hidden_states=True).hidden_states[1][0]
            norms.extend(hidden[batch["labels"][0] != -100].norm(dim=-1).tolist())
    options = json.loads((tmp_path / "config.json").read_text())["options"]["method_options"]
    assert options["forget_hidden_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    assert options["steering_coeff"] == pytest.approx(3.0 * sum(norms) / len(norms), rel=1e-5)


def test_config_json_counts_the_samples_cut_to_max_length(tokenizer, tmp_path):
    forget, retain = SAMPLES, toy_samples("r")[4:8]
    lengths = [len(e.input_ids) for e in encode_samples(tokenizer, forget + retain).samples]
    limit = sorted(lengths)[len(lengths) // 2]
    config = StepsToForgetConfig(method="grad_diff", lr=2e-3, max_steps=1, copies=2,
                                 max_length=limit)
    steps_to_forget(toy_llama(tokenizer), tokenizer, forget, config=config, out_dir=tmp_path,
                    retain_samples=retain)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["n_truncated"] == sum(n > limit for n in lengths) > 0


def test_resume_skips_finished_samples(tokenizer, tmp_path, monkeypatch):
    config = StepsToForgetConfig(method="grad_ascent", lr=2e-3, max_steps=6, copies=2)
    full = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config)
    steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES[:2], config=config, out_dir=tmp_path)
    seen = []
    real_chunk = stf._run_chunk

    def counting(model, unlearner, reference, encoded, *args):
        seen.extend(e.sample_id for e in encoded)
        return real_chunk(model, unlearner, reference, encoded, *args)

    monkeypatch.setattr(stf, "_run_chunk", counting)
    resumed = steps_to_forget(toy_llama(tokenizer), tokenizer, SAMPLES, config=config,
                              out_dir=tmp_path, resume=True)
    assert seen == [s.id for s in SAMPLES[2:]]
    pd.testing.assert_frame_equal(resumed, full, rtol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "steps_to_forget.parquet"), full,
                                  rtol=1e-5)
