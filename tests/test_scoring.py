import json
import logging
import math
import zlib

import pandas as pd
import pytest
import torch

from unlearnscope.data import Sample, encode_samples
from unlearnscope.data.tokenize import IGNORE_INDEX
from unlearnscope.errors import DataError, NonFiniteError, UnknownNameError
from unlearnscope.runs import ProgressLog, changed_settings, read_json, write_config
from unlearnscope.scoring import BASELINES, SCORERS, get_scorer, read_scorer_configs, score_samples
from unlearnscope.scoring.base import Scorer
from unlearnscope.scoring.runner import options_digest, value_options


def _toy():
    """Logits `[2, 6, 5]` and labels with prompt, answer and padding positions."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=gen)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3, 1, 4],
                           [IGNORE_INDEX, 0, 4, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    # make argmax hit labels at chosen positions: row 0 hits at answer tokens 0 and 2 (of 4)
    for row, pos, hit in [(0, 1, True), (0, 2, False), (0, 3, True), (0, 4, False),
                          (1, 0, True), (1, 1, True)]:
        target = labels[row, pos + 1].item()
        logits[row, pos, target] = 5.0 if hit else -5.0
    return logits, labels


def _token_logprobs(logits, labels, row):
    """Plain-Python log-softmax of each answer token of `row`, in order."""
    out = []
    for pos in range(1, labels.shape[1]):
        target = labels[row, pos].item()
        if target == IGNORE_INDEX:
            continue
        row_logits = logits[row, pos - 1].tolist()
        log_z = math.log(sum(math.exp(v) for v in row_logits))
        out.append(row_logits[target] - log_z)
    return out


def _hits(logits, labels, row):
    return [max(range(5), key=lambda v: logits[row, pos - 1, v].item()) == labels[row, pos].item()
            for pos in range(1, labels.shape[1]) if labels[row, pos].item() != IGNORE_INDEX]


SAMPLES = [Sample("a", "Q?", "The answer is long enough."), Sample("b", "Q?", "No.")]


@pytest.mark.parametrize("name", ["loss", "prob", "exact_memorization", "extraction_strength",
                                  "min_k", "zlib"])
def test_logit_baselines_match_hand_computation(name):
    logits, labels = _toy()
    got = get_scorer(name).from_logits(logits, {"labels": labels}, SAMPLES)
    for row in range(2):
        logp = _token_logprobs(logits, labels, row)
        hits = _hits(logits, labels, row)
        loss = -sum(logp) / len(logp)
        if name == "loss":
            expected = loss
        elif name == "prob":
            expected = math.exp(-loss)
        elif name == "exact_memorization":
            expected = sum(hits) / len(hits)
        elif name == "extraction_strength":
            k = next(k for k in range(len(hits) + 1) if all(hits[k:]))
            expected = 1 - k / len(hits)
        elif name == "min_k":
            n = max(1, int(0.4 * len(logp)))
            expected = sum(sorted(logp)[:n]) / n
        else:
            expected = loss / len(zlib.compress(SAMPLES[row].answer.encode()))
        assert got[row].item() == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, row)


def test_hand_values_of_the_toy_design():
    logits, labels = _toy()
    em = get_scorer("exact_memorization").from_logits(logits, {"labels": labels}, SAMPLES)
    es = get_scorer("extraction_strength").from_logits(logits, {"labels": labels}, SAMPLES)
    assert em.tolist() == pytest.approx([0.5, 1.0])
    assert es.tolist() == pytest.approx([0.0, 1.0])  # row 0 misses its last token


def test_prompt_and_padding_logits_change_nothing():
    logits, labels = _toy()
    changed = logits.clone()
    changed[0, 0] += 100.0  # predicts a prompt token
    changed[1, 3:] -= 50.0  # padding positions
    for name in ("loss", "exact_memorization", "min_k"):
        scorer = get_scorer(name)
        torch.testing.assert_close(scorer.from_logits(logits, {"labels": labels}, SAMPLES),
                                   scorer.from_logits(changed, {"labels": labels}, SAMPLES))


def test_grad_norm_matches_per_parameter_backward(tiny_lm, small_samples):
    model, tok = tiny_lm
    samples = small_samples[:3]
    encoded = encode_samples(tok, samples).samples
    got = get_scorer("grad_norm").score(model, tok, samples, encoded, batch_size=2)
    for index, enc in enumerate(encoded):
        model.zero_grad()
        ids = torch.tensor([enc.input_ids])
        labels = torch.tensor([enc.labels])
        logits = model(ids).logits[0, :-1]
        mask = labels[0, 1:] != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits[mask], labels[0, 1:][mask])
        loss.backward()
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert got[index].item() == pytest.approx(expected, rel=1e-4)
    model.zero_grad()


def test_registry_and_orientation():
    assert set(BASELINES) <= set(SCORERS)
    with pytest.raises(UnknownNameError, match="unknown scorer 'vibes'"):
        get_scorer("vibes")
    assert get_scorer("prob").higher_is_harder and not get_scorer("loss").higher_is_harder


def test_score_table_rows_and_difficulty_sign(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    table = score_samples(model, tok, small_samples, [get_scorer(n) for n in BASELINES],
                          tmp_path, batch_size=4)
    assert list(table.columns) == ["sample_id", "scorer", "value", "difficulty"]
    assert len(table) == len(small_samples) * len(BASELINES)
    on_disk = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    loss = table[table.scorer == "loss"]
    assert (loss.difficulty == -loss.value).all()
    prob = table[table.scorer == "prob"].set_index("sample_id")
    assert (prob.difficulty == prob.value).all()
    assert prob.value.to_numpy() == pytest.approx(
        torch.exp(-torch.tensor(loss.value.to_numpy())).numpy())


def test_batch_size_does_not_change_values(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    scorers = [get_scorer(n) for n in ("loss", "min_k", "extraction_strength")]
    one = score_samples(model, tok, small_samples, scorers, tmp_path / "b1", batch_size=1)
    five = score_samples(model, tok, small_samples, scorers, tmp_path / "b5", batch_size=5)
    assert one.value.to_numpy() == pytest.approx(five.value.to_numpy(), abs=1e-6)


class _Crash(Exception):
    pass


class _CrashAfter(Scorer):
    """Wraps `loss`; raises on its `limit`-th call, as a kill mid-run would stop the job."""

    name = "loss"
    higher_is_harder = False

    def __init__(self, limit):
        super().__init__()
        self.calls = 0
        self.limit = limit

    def score(self, model, tokenizer, samples, encoded, *, batch_size):
        self.calls += 1
        if self.calls == self.limit:
            raise _Crash
        return get_scorer("loss").score(model, tokenizer, samples, encoded,
                                        batch_size=batch_size)


def test_killed_run_resumes_to_the_same_file(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    clean = score_samples(model, tok, small_samples, [get_scorer("loss")], tmp_path / "clean",
                          chunk_size=4)
    crashing = _CrashAfter(limit=2)
    with pytest.raises(_Crash):
        score_samples(model, tok, small_samples, [crashing], tmp_path / "run", chunk_size=4)
    assert not (tmp_path / "run" / "scores.parquet").exists()  # nothing half-written
    counting = _CrashAfter(limit=0)
    resumed = score_samples(model, tok, small_samples, [counting], tmp_path / "run",
                            chunk_size=4, resume=True)
    assert counting.calls == 2  # 12 samples in chunks of 4, the first chunk was kept
    pd.testing.assert_frame_equal(resumed, clean)


def test_same_seed_same_outputs(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    scorers = [get_scorer(n) for n in BASELINES]
    first = score_samples(model, tok, small_samples, scorers, tmp_path / "1")
    second = score_samples(model, tok, small_samples, scorers, tmp_path / "2")
    pd.testing.assert_frame_equal(first, second)


def test_non_finite_scores_stop_the_run(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm

    class Broken(Scorer):
        name = "broken"
        higher_is_harder = True

        def score(self, model, tokenizer, samples, encoded, *, batch_size):
            values = torch.zeros(len(samples), dtype=torch.float64)
            values[1] = float("nan")
            return values

    with pytest.raises(NonFiniteError, match=r"scorer 'broken'.*index \[1\]"):
        score_samples(model, tok, small_samples, [Broken()], tmp_path)


def test_merge_adds_scorers_to_an_existing_table(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    first = score_samples(model, tok, small_samples, [get_scorer("loss"), get_scorer("prob")],
                          tmp_path)
    merged = score_samples(model, tok, small_samples, [get_scorer("min_k"), get_scorer("prob")],
                           tmp_path, merge=True)
    assert list(merged.scorer.drop_duplicates()) == ["loss", "min_k", "prob"]
    pd.testing.assert_frame_equal(merged[merged.scorer == "loss"].reset_index(drop=True),
                                  first[first.scorer == "loss"].reset_index(drop=True))
    assert len(merged) == 3 * len(small_samples)
    replaced = score_samples(model, tok, small_samples, [get_scorer("zlib")], tmp_path)
    assert set(replaced.scorer) == {"zlib"}  # without merge the table is the new scorers only


# ---- resume with changed options, scorers.json -------------------------------------------


@pytest.mark.parametrize(("name", "before", "after", "change"), [
    ("mrd", {"k": 2}, {"k": 3}, "k: 2 -> 3"),
    ("mrd", {"k": 2, "sigma": 1e-5}, {"k": 2, "sigma": 1e-3}, "sigma: 1e-05 -> 0.001"),
    ("min_k", {"k": 0.4}, {"k": 0.2}, "k: 0.4 -> 0.2"),
])
def test_resume_recomputes_a_scorer_whose_options_changed(tiny_lm, small_samples, tmp_path,
                                                          caplog, name, before, after, change):
    model, tok = tiny_lm
    old = score_samples(model, tok, small_samples, [_CrashAfter(limit=0),
                                                    get_scorer(name, **before)],
                        tmp_path / "run", chunk_size=4)
    unchanged = _CrashAfter(limit=0)
    with caplog.at_level(logging.WARNING, logger="unlearnscope.scoring.runner"):
        resumed = score_samples(model, tok, small_samples, [unchanged, get_scorer(name, **after)],
                                tmp_path / "run", chunk_size=4, resume=True)
    assert unchanged.calls == 0  # loss kept its options: its values are reused
    fresh = score_samples(model, tok, small_samples, [get_scorer(name, **after)],
                          tmp_path / "fresh", chunk_size=4)
    values = resumed[resumed.scorer == name].reset_index(drop=True)
    pd.testing.assert_frame_equal(values, fresh)
    assert not values.value.equals(old[old.scorer == name].reset_index(drop=True).value)
    assert f"scorer '{name}'" in caplog.text and change in caplog.text
    # resuming again with the new options reuses everything and reports nothing
    caplog.clear()
    counted = _CrashAfter(limit=0)
    with caplog.at_level(logging.WARNING, logger="unlearnscope.scoring.runner"):
        again = score_samples(model, tok, small_samples, [counted, get_scorer(name, **after)],
                              tmp_path / "run", chunk_size=4, resume=True)
    assert counted.calls == 0 and caplog.text == ""
    pd.testing.assert_frame_equal(again, resumed)


def test_progress_without_options_is_not_reused(tiny_lm, small_samples, tmp_path, caplog):
    model, tok = tiny_lm
    ProgressLog(tmp_path / "progress" / "scores-rank0.jsonl").append(
        {"sample_id": s.id, "scorer": "loss", "value": 123.0} for s in small_samples)
    with caplog.at_level(logging.WARNING, logger="unlearnscope.scoring.runner"):
        table = score_samples(model, tok, small_samples, [get_scorer("loss")], tmp_path,
                              resume=True)
    assert not (table.value == 123.0).any()
    assert "recorded without their options" in caplog.text


def test_value_options_leave_out_the_class_description():
    options = value_options(get_scorer("mrd", k=5))
    assert options == {"k": 5, "sigma": 1e-5, "seed": 0}
    assert options_digest(options) == options_digest({"seed": 0, "sigma": 1e-5, "k": 5})
    assert options_digest(options) != options_digest({**options, "k": 6})
    assert changed_settings({"k": 5, "a": 1}, {"k": 6, "b": "x"}) == [
        'a: 1 -> unset', 'b: unset -> "x"', "k: 5 -> 6"]


def test_scorers_json_holds_the_configs_of_the_table(tiny_lm, small_samples, tmp_path):
    model, tok = tiny_lm
    score_samples(model, tok, small_samples, [get_scorer("loss"), get_scorer("min_k", k=0.3)],
                  tmp_path)
    expected = {"loss": get_scorer("loss").config(), "min_k": get_scorer("min_k", k=0.3).config()}
    assert read_json(tmp_path / "scorers.json") == expected
    assert expected["min_k"] == {"name": "min_k", "higher_is_harder": True, "k": 0.3}
    assert read_scorer_configs(tmp_path) == expected
    assert read_scorer_configs(tmp_path / "scores.parquet") == expected
    # merge keeps the entries of the kept scorers; a recomputed scorer gets its new config
    score_samples(model, tok, small_samples, [get_scorer("prob"), get_scorer("min_k", k=0.5)],
                  tmp_path, merge=True)
    merged = read_scorer_configs(tmp_path)
    assert set(merged) == {"loss", "min_k", "prob"} == set(pd.read_parquet(
        tmp_path / "scores.parquet").scorer)
    assert merged["min_k"]["k"] == 0.5 and merged["loss"] == expected["loss"]
    score_samples(model, tok, small_samples, [get_scorer("zlib")], tmp_path)
    assert set(read_scorer_configs(tmp_path)) == {"zlib"}


def test_read_scorer_configs_falls_back_to_config_json(tmp_path):
    assert read_scorer_configs(tmp_path) == {}
    listed = [{"name": "cud", "uses_anchors": True, "anchor_fit_ids": ["a", "b"]},
              {"name": "loss", "higher_is_harder": False}]
    write_config(tmp_path, "score", {"scorers": "cud,loss", "scorer_configs": listed})
    assert read_scorer_configs(tmp_path) == {"cud": listed[0], "loss": listed[1]}
    write_config(tmp_path, "circuits", {"method": "EAP"})
    assert read_scorer_configs(tmp_path) == {}
    write_config(tmp_path, "score", {"scorer_configs": [{"uses_anchors": True}]})
    with pytest.raises(DataError, match="scorer_configs"):
        read_scorer_configs(tmp_path)
    (tmp_path / "scorers.json").write_text(json.dumps({"cud": 3}))
    with pytest.raises(DataError, match=r"scorers\.json"):
        read_scorer_configs(tmp_path)


def test_only_cud_scorers_use_anchors():
    assert not Scorer.uses_anchors
    assert {name for name, cls in SCORERS.items() if cls.uses_anchors} == {"cud", "cud_paper"}


def test_option_names_are_what_each_scorer_takes():
    """A pipeline hands the run's seed and corpus to the scorers whose options name them."""
    import inspect

    import unlearnscope.scoring  # noqa: F401  (registers every scorer)
    from unlearnscope.scoring.base import SCORERS, Scorer, option_names

    for name, kind in SCORERS.items():
        known = option_names(kind)  # None: the scorer takes any option (**options)
        if known is not None and kind.__init__ is not Scorer.__init__:
            parameters = set(inspect.signature(kind.__init__).parameters) - {"self"}
            assert set(known) == parameters, name
    assert "seed" in option_names(SCORERS["mrd"]) and "seed" in option_names(
        SCORERS["mrd_hutchinson"])
    assert "corpus" in option_names(SCORERS["answer_rarity"])
    assert "seed" not in option_names(SCORERS["mrd_grad"])
