"""Training precision: float32 unchanged, bf16-autocast around the training forward and loss
only (float32 weights, float32 evaluations), in fine-tuning and unlearning."""

from __future__ import annotations

import copy
import json
import warnings

import pandas as pd
import pytest
import torch

from tiny_models import tiny_llama, toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.cli import main
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.models.finetune import FinetuneConfig, finetune
from unlearnscope.models.precision import (
    PRECISIONS,
    check_precision,
    native_cpu_bf16,
    training_autocast,
)
from unlearnscope.unlearning.trainer import run_unlearning


def output_dtypes(module: torch.nn.Module) -> tuple[list[torch.dtype], object]:
    """The dtype of every output of `module` from now on, and the hook handle."""
    seen: list[torch.dtype] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen, handle


def test_training_autocast_is_nothing_for_float32_and_bf16_with_float32_weights():
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    ids = torch.tensor([[1, 5, 7, 9]])
    assert PRECISIONS == ("float32", "bf16-autocast")
    with training_autocast("float32", model):
        assert not torch.is_autocast_enabled("cpu")
        assert model(input_ids=ids).logits.dtype == torch.float32
    with training_autocast("bf16-autocast", model):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(UnknownNameError, match="unknown precision 'bf16'"):
        check_precision("bf16")
    with pytest.raises(DataError, match=r"float32 master weights.*torch\.bfloat16"):
        training_autocast("bf16-autocast", copy.deepcopy(model).to(torch.bfloat16))
    with pytest.raises(UnknownNameError, match="precision"):
        finetune(model, tokenizer, toy_samples(), "unused", FinetuneConfig(precision="fp16"))


@pytest.fixture(scope="module")
def fresh(small_samples):
    def build():
        return tiny_llama(small_samples, seed=1)
    return build


def test_finetune_bf16_autocast_trains_in_bf16_and_evaluates_in_float32(fresh, small_samples,
                                                                       tmp_path):
    config = FinetuneConfig(epochs=3, lr=3e-3, batch_size=4, seed=1, target_prob=0.999,
                            precision="bf16-autocast")
    model, tokenizer = fresh()
    seen, handle = output_dtypes(model.lm_head)
    trained = finetune(model, tokenizer, small_samples, tmp_path / "bf16", config)
    handle.remove()
    batches = 3 * 3  # 12 samples, batch 4, 3 epochs
    # training batches in bfloat16; the per-epoch target probability and the final one float32
    assert seen[:3] == [torch.bfloat16] * 3 and seen.count(torch.bfloat16) == batches
    assert seen.count(torch.float32) == len(seen) - batches > 0
    assert all(p.dtype == torch.float32 for p in trained.parameters())
    training = pd.read_parquet(tmp_path / "bf16" / "training.parquet")
    by_epoch = training.groupby("epoch")["loss"].mean().tolist()
    assert by_epoch[0] > by_epoch[1] > by_epoch[2]
    report = json.loads((tmp_path / "bf16" / "finetune.json").read_text())
    assert report["precision"] == "bf16-autocast"
    assert report["target_prob_by_epoch"][-1] > report["target_prob_by_epoch"][0]


def test_finetune_float32_is_the_default_and_never_autocasts(fresh, small_samples, tmp_path):
    config = FinetuneConfig(epochs=1, lr=3e-3, batch_size=4, seed=1)
    assert config.precision == "float32"
    runs = []
    for name, precision in (("default", None), ("explicit", "float32")):
        model, tokenizer = fresh()
        seen, handle = output_dtypes(model.lm_head)
        chosen = config if precision is None else FinetuneConfig(
            **{**config.__dict__, "precision": precision})
        runs.append(finetune(model, tokenizer, small_samples, tmp_path / name, chosen))
        handle.remove()
        assert set(seen) == {torch.float32}
    for (name, a), (_, b) in zip(runs[0].state_dict().items(), runs[1].state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["grad_diff", "npo"])
def test_unlearning_bf16_autocast_lowers_the_loss_and_records_the_precision(method, tmp_path):
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    seen, handle = output_dtypes(model.lm_head)
    result = run_unlearning(model, tokenizer, toy_samples("f")[:4], toy_samples("r")[4:], method,
                            epochs=6, lr=5e-3, batch_size=2, grad_accum=1, warmup_epochs=0.0,
                            precision="bf16-autocast", out_dir=tmp_path, save=False)
    handle.remove()
    steps = 12  # 4 samples, batch 2, 6 epochs
    # each step: a forget and a retain forward of the model, and for NPO one of its frozen
    # reference (a deep copy, hook included); before/after: forget and retain evaluations
    assert seen.count(torch.bfloat16) == (3 if method == "npo" else 2) * steps
    assert seen.count(torch.float32) == 4
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    losses = result.training["loss"].tolist()
    assert sum(losses[-3:]) < sum(losses[:3])
    assert result.summary["forget"]["loss_after"] > result.summary["forget"]["loss_before"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["options"]["settings"]["precision"] == "bf16-autocast"


SMALL_DATA = "synthetic:authors/{}?n_authors=4&questions_per_author=3"


def test_cli_precision_flags_reach_the_runs_and_their_records(tiny_model_dir, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "tiny", "--data", SMALL_DATA.format("forget"), "--out",
                 str(out), "--epochs", "1", "--lr", "3e-3", "--precision", "bf16-autocast"]) == 0
    assert json.loads((out / "config.json").read_text())["options"]["precision"] == "bf16-autocast"
    assert json.loads((out / "finetune.json").read_text())["precision"] == "bf16-autocast"
    out = tmp_path / "unlearn"
    assert main(["unlearn", "--model", str(tiny_model_dir), "--method", "grad_diff", "--forget",
                 SMALL_DATA.format("forget"), "--retain", SMALL_DATA.format("retain"), "--out",
                 str(out), "--epochs", "1", "--batch-size", "4", "--grad-accum", "1",
                 "--warmup-epochs", "0", "--no-save", "--precision", "bf16-autocast"]) == 0
    recorded = json.loads((out / "config.json").read_text())["options"]
    assert recorded["precision"] == recorded["settings"]["precision"] == "bf16-autocast"
    assert json.loads((out / "summary.json").read_text())["settings"]["precision"] == (
        "bf16-autocast")
    with pytest.raises(SystemExit):
        main(["unlearn", "--model", "x", "--method", "npo", "--forget", "x", "--out", "x",
              "--precision", "fp16"])


@pytest.mark.parametrize("avx512_bf16, amx, warns", [(False, False, True), (True, False, False),
                                                     (False, True, False)])
def test_bf16_autocast_warns_on_a_cpu_that_emulates_bfloat16(monkeypatch, avx512_bf16, amx,
                                                             warns):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    model = toy_llama(toy_tokenizer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with training_autocast("bf16-autocast", model):
            pass
        with training_autocast("float32", model):
            pass
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == warns and all("AVX512-BF16 or AMX" in m for m in messages)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_cpu_bf16()  # torch cannot tell: no warning
