"""Fine-tuning's learning-rate schedule: one step per optimizer update, in one or two processes
(torchrun + gloo), and across a resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tiny_models import tiny_llama
from unlearnscope.cli import main
from unlearnscope.data import load_samples
from unlearnscope.models import finetune as finetune_module
from unlearnscope.models.finetune import FinetuneConfig, finetune

DATA = "synthetic:authors?n_authors=4&questions_per_author=3"  # 12 samples
LR = 3e-3


def finetune_args(out, *extra: str) -> list[str]:
    return ["finetune", "--model", "tiny", "--data", DATA, "--out", str(out), "--epochs", "3",
            "--lr", str(LR), "--warmup-ratio", "0.25", *extra]


def linear_schedule(total: int, warmup: int) -> list[float]:
    """transformers' linear warm-up then decay to 0, at updates 0 .. total-1."""
    return [LR * step / warmup if step < warmup else LR * (total - step) / (total - warmup)
            for step in range(total)]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "unlearnscope",
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          check=False)


def test_one_process_log_follows_the_linear_schedule(tmp_path):
    # 12 samples, batch 4: 3 updates per epoch, 9 in all, int(0.25 * 9) = 2 warm-up updates
    assert main(finetune_args(tmp_path / "one", "--batch-size", "4")) == 0
    training = pd.read_parquet(tmp_path / "one" / "training.parquet")
    assert training["update"].tolist() == list(range(1, 10))
    assert training["epoch"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert training["lr"].tolist() == pytest.approx(linear_schedule(9, 2), rel=1e-9, abs=1e-12)
    assert (training["loss"] > 0).all()


@pytest.mark.slow
def test_two_process_lr_per_update_equals_one_process(tmp_path):
    """Same global batch (4): 1 process x batch 4 against 2 processes x batch 1 x accumulation 2."""
    assert main(finetune_args(tmp_path / "one", "--batch-size", "4")) == 0
    done = torchrun(*finetune_args(tmp_path / "two", "--batch-size", "1", "--grad-accum", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    one = pd.read_parquet(tmp_path / "one" / "training.parquet")
    two = pd.read_parquet(tmp_path / "two" / "training.parquet")
    assert two["update"].tolist() == one["update"].tolist() == list(range(1, 10))
    assert two["epoch"].tolist() == one["epoch"].tolist()
    assert two["lr"].tolist() == pytest.approx(one["lr"].tolist(), rel=1e-9, abs=1e-12)
    assert min(two["lr"].iloc[2:]) > 0  # the decay reaches 0 only after the last update


def test_resumed_run_continues_the_schedule(tmp_path, monkeypatch):
    """Killed after epoch 1 of 3 and resumed, the log (and its LR) equals a straight run's."""
    samples = load_samples(DATA)
    config = FinetuneConfig(epochs=3, lr=LR, batch_size=4, warmup_ratio=0.25, seed=1)
    model, tok = tiny_llama(samples, seed=1)
    finetune(model, tok, samples, tmp_path / "straight", config, save=False)

    real_checkpoint = finetune_module._checkpoint

    def checkpoint_then_die(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "_checkpoint", checkpoint_then_die)
    model, tok = tiny_llama(samples, seed=1)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, tok, samples, tmp_path / "resumed", config, save=False)
    monkeypatch.setattr(finetune_module, "_checkpoint", real_checkpoint)
    model, tok = tiny_llama(samples, seed=1)
    finetune(model, tok, samples, tmp_path / "resumed", config, resume=True, save=False)

    straight = pd.read_parquet(tmp_path / "straight" / "training.parquet")
    resumed = pd.read_parquet(tmp_path / "resumed" / "training.parquet")
    assert resumed["lr"].tolist() == pytest.approx(linear_schedule(9, 2), rel=1e-9, abs=1e-12)
    pd.testing.assert_frame_equal(resumed, straight)


FORGET = "synthetic:authors/forget?n_authors=4&questions_per_author=3"
RETAIN = "synthetic:authors/retain?n_authors=4&questions_per_author=3"


def test_target_prob_is_measured_on_the_target_data(tmp_path, capsys):
    """`--target-data` names the samples `--target-prob` applies to (here the forget set of a
    forget + retain run): their mean answer probability after every epoch is recorded, and the
    first epoch reaching the target stops training."""
    from unlearnscope.models import load_model
    from unlearnscope.models.finetune import mean_answer_prob

    def run(out, target_prob: float) -> dict:
        assert main(["finetune", "--model", "tiny", "--data", FORGET, "--extra-data", RETAIN,
                     "--target-data", FORGET, "--target-prob", str(target_prob), "--out",
                     str(out), "--epochs", "3", "--lr", "1e-2", "--batch-size", "4"]) == 0
        return json.loads((out / "finetune.json").read_text())

    report = run(tmp_path / "full", 0.999)  # never reached: all 3 epochs
    forget = load_samples(FORGET)
    assert report["epochs_trained"] == 3 and report["n_target_samples"] == len(forget) == 3
    probs = report["target_prob_by_epoch"]
    assert len(probs) == 3 and probs[0] < probs[1] < probs[2] < 0.999
    model, tokenizer = load_model(str(tmp_path / "full" / "model"), device="cpu")
    assert probs[-1] == pytest.approx(mean_answer_prob(model, tokenizer, forget), rel=1e-5)
    everything = forget + load_samples(RETAIN)
    assert report["mean_answer_prob"] == pytest.approx(
        mean_answer_prob(model, tokenizer, everything), rel=1e-5)
    assert probs[-1] != pytest.approx(report["mean_answer_prob"], rel=1e-2)  # not all data

    stopped = run(tmp_path / "stopped", (probs[0] + probs[1]) / 2)
    assert stopped["epochs_trained"] == 2
    assert stopped["target_prob_by_epoch"] == pytest.approx(probs[:2], rel=1e-6)

    assert main(["finetune", "--model", "tiny", "--data", FORGET, "--target-data", FORGET,
                 "--out", str(tmp_path / "refused")]) == 2
    assert "give --target-prob too" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "config.json").exists()
