"""A real `kill -9` of the CLI, then `--resume`: the final products equal those of an
uninterrupted run, with no sample lost and none stored twice; and the same seed gives the
same bytes.

The killed run is a subprocess (`python -m unlearnscope ...`), sent SIGKILL as soon as its
first durable partial product is on disk (a progress line, a shard, a checkpoint). The sizes
leave well over a second of work after that point, so the kill lands mid-run; should it land
after the end all the same, the test still holds: the finished products are then compared
as they are. The resumed and the uninterrupted runs are in-process (`main`), on one thread
like the subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from unlearnscope.circuits.store import CircuitStore, shard_files
from unlearnscope.cli import main
from unlearnscope.data import load_samples
from unlearnscope.runs import ProgressLog

SRC = Path(__file__).resolve().parents[1] / "src"
DATA = "synthetic:authors?n_authors=8&questions_per_author=4"  # 32 samples
FORGET = "synthetic:authors/forget?n_authors=40&questions_per_author=4"  # 32 samples
RETAIN = "synthetic:authors/retain?n_authors=40&questions_per_author=1"  # 32 other samples
IDS = [s.id for s in load_samples(DATA)]
FORGET_IDS = [s.id for s in load_samples(FORGET)]
STARTUP_LIMIT_S = 120  # imports on a loaded 2-core machine; a run that never gets going fails


def _command(name: str, model_dir: Path) -> list[str]:
    """The command line of each case, without `--out`."""
    model = ["--model", str(model_dir)]
    return {
        "score": ["score", *model, "--data", DATA, "--scorers", "loss,mrd", "--scorer-option",
                  "mrd.k=20", "--scorer-option", "mrd.seed=3", "--chunk-size", "2",
                  "--batch-size", "2"],
        "circuits": ["circuits", *model, "--data", DATA, "--shard-size", "2", "--batch-size",
                     "2"],
        "unlearn": ["unlearn", *model, "--forget", FORGET, "--retain", RETAIN, "--method",
                    "grad_diff", "--batch-size", "2", "--grad-accum", "2", "--epochs", "1", "--lr", "1e-3",
                    "--checkpoint-every", "1", "--seed", "5"],
        "finetune": ["finetune", *model, "--data", DATA, "--batch-size", "2", "--epochs", "2",
                     "--lr", "1e-3", "--checkpoint-every", "1", "--seed", "5"],
    }[name]


def _kill_at_first_product(argv: list[str], out: Path,
                           product: Callable[[Path], bool]) -> bool:
    """Run the CLI in a subprocess and SIGKILL it once `product(out)` holds. True when the kill
    interrupted it, False when it had already finished (exit code 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH"))
                                         if p)}
    process = subprocess.Popen([sys.executable, "-m", "unlearnscope", *argv, "--out", str(out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not product(out):
        if process.poll() is not None:
            pytest.fail(f"{argv[0]} ended (exit code {process.returncode}) before its first "
                        f"partial product:\n{process.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{argv[0]} wrote no partial product in {STARTUP_LIMIT_S} s")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode in (-signal.SIGKILL, 0)
    return process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory) -> Callable[[str], Path]:
    """The output folder of an uninterrupted in-process run of each case, run once."""
    root = tmp_path_factory.mktemp("straight")
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            assert main([*_command(name, tiny_model_dir), "--out", str(root / name)]) == 0
            done[name] = root / name
        return done[name]

    return run


def _killed_and_resumed(name: str, model_dir: Path, out: Path,
                        product: Callable[[Path], bool], final: str) -> bool:
    """Kill the case's CLI run at its first partial product, check that the final product
    `final` exists only if the run was not interrupted, then resume it in-process."""
    argv = _command(name, model_dir)
    killed = _kill_at_first_product(argv, out, product)
    assert (out / final).exists() != killed  # nothing final is written before the end
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    return killed


def _tensors_equal(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ---- score: progress lines ----------------------------------------------------------------


def _progress_lines(out: Path) -> list[dict]:
    return ProgressLog(out / "progress" / "scores-rank0.jsonl").read()


def test_score_killed_and_resumed_writes_the_same_bytes(tiny_model_dir, straight, tmp_path):
    out = tmp_path / "run"
    before: list[dict] = []

    def first_chunk(folder: Path) -> bool:
        before[:] = _progress_lines(folder)
        return bool(before)

    killed = _killed_and_resumed("score", tiny_model_dir, out, first_chunk, "scores.parquet")
    assert (out / "scores.parquet").read_bytes() == \
        (straight("score") / "scores.parquet").read_bytes()
    table = pd.read_parquet(out / "scores.parquet")
    for scorer in ("loss", "mrd"):
        assert sorted(table[table.scorer == scorer].sample_id) == sorted(IDS)
    lines = _progress_lines(out)
    recorded = [(r["sample_id"], r["scorer"]) for r in lines]
    assert len(recorded) == len(set(recorded)) == 2 * len(IDS)  # nothing scored twice
    if killed:
        assert lines[:len(before)] == before  # the chunks finished before the kill were kept


# ---- circuits: shards ---------------------------------------------------------------------


def test_circuits_killed_and_resumed_store_the_same_scores(tiny_model_dir, straight, tmp_path):
    out = tmp_path / "run"
    before: dict[str, bytes] = {}

    def first_shard(folder: Path) -> bool:
        before.update({p.name: p.read_bytes() for p in shard_files(folder / "circuits")})
        return bool(before)

    killed = _killed_and_resumed("circuits", tiny_model_dir, out, first_shard,
                                 "circuits/index.json")
    resumed = CircuitStore.open(out / "circuits")
    reference = CircuitStore.open(straight("circuits") / "circuits")
    stored = []
    for shard in shard_files(out / "circuits"):
        with safe_open(str(shard), framework="pt") as handle:
            stored += json.loads(handle.metadata()["sample_ids"])
    assert sorted(stored) == sorted(IDS)  # every sample once, in one shard
    assert torch.equal(resumed.edge_scores(IDS), reference.edge_scores(IDS))
    if killed:  # the shards finished before the kill are kept as they were
        assert {name: (out / "circuits" / name).read_bytes() for name in before} == before


# ---- unlearn and finetune: checkpoints ----------------------------------------------------


def test_unlearn_killed_and_resumed_reaches_the_same_model(tiny_model_dir, straight, tmp_path):
    out = tmp_path / "run"
    _killed_and_resumed("unlearn", tiny_model_dir, out,
                        lambda folder: (folder / "checkpoint" / "latest" / "progress.json")
                        .is_file(), "outcomes.parquet")
    reference = straight("unlearn")
    _tensors_equal(out / "model" / "model.safetensors", reference / "model" / "model.safetensors")
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    pd.testing.assert_frame_equal(outcomes, pd.read_parquet(reference / "outcomes.parquet"))
    assert sorted(outcomes.sample_id) == sorted(FORGET_IDS)
    training = pd.read_parquet(out / "training.parquet")
    pd.testing.assert_frame_equal(training, pd.read_parquet(reference / "training.parquet"))
    assert training.step.tolist() == list(range(1, len(FORGET_IDS) // 4 + 1))  # each step once
    assert not list(out.glob("checkpoint*"))  # nor a half-written one


def test_finetune_killed_and_resumed_reaches_the_same_model(tiny_model_dir, straight,
                                                            tmp_path):
    out = tmp_path / "run"
    _killed_and_resumed("finetune", tiny_model_dir, out,
                        lambda folder: (folder / "checkpoint" / "progress.json").is_file(),
                        "finetune.json")
    reference = straight("finetune")
    _tensors_equal(out / "model" / "model.safetensors", reference / "model" / "model.safetensors")
    training = pd.read_parquet(out / "training.parquet")
    pd.testing.assert_frame_equal(training, pd.read_parquet(reference / "training.parquet"))
    assert training["update"].tolist() == list(range(1, 2 * len(IDS) // 2 + 1))  # each update once
    assert json.loads((out / "finetune.json").read_text()) == \
        json.loads((reference / "finetune.json").read_text())
    assert not list(out.glob("checkpoint*"))  # nor a half-written one


# ---- same seed, same bytes ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "files"), [
    ("score", ["scores.parquet", "scorers.json"]),
    ("unlearn", ["outcomes.parquet", "training.parquet", "model/model.safetensors"]),
])
def test_the_same_seed_writes_the_same_bytes(tiny_model_dir, straight, tmp_path, name, files):
    assert main([*_command(name, tiny_model_dir), "--out", str(tmp_path)]) == 0
    for file in files:
        assert (tmp_path / file).read_bytes() == (straight(name) / file).read_bytes(), file
