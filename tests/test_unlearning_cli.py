"""`unlearnscope unlearn` and `steps-to-forget` from the command line, one and two processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tiny_models import toy_llama, toy_tokenizer
from unlearning_support import toy_samples
from unlearnscope.cli import main
from unlearnscope.cli import unlearn as unlearn_cli
from unlearnscope.cli._common import key_values, named_key_values
from unlearnscope.cli.unlearn import METHOD_OPTIONS_HELP
from unlearnscope.errors import UnlearnscopeError
from unlearnscope.layout import read_seed_outcomes
from unlearnscope.unlearning import trainer
from unlearnscope.unlearning.methods import (
    METHODS,
    NLL_WEIGHTINGS,
    RMU_SETTINGS,
    UnlearningMethod,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = toy_tokenizer()
    model = toy_llama(tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    samples = toy_samples()
    for name, part in (("forget", samples[:4]), ("retain", samples[4:])):
        with open(root / f"{name}.jsonl", "w") as handle:
            for s in part:
                handle.write(json.dumps({"id": s.id, "question": s.question,
                                         "answer": s.answer}) + "\n")
    return root


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m unlearnscope ARGS` in two CPU processes on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "unlearnscope",
               *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env,
                          check=False)


def unlearn_args(root, out, *extra):
    return ["unlearn", "--model", str(root / "model"), "--method", "grad_diff",
            "--forget", f"jsonl:{root / 'forget.jsonl'}?id_field=id", "--retain",
            f"jsonl:{root / 'retain.jsonl'}", "--out", str(out), "--epochs", "2",
            "--batch-size", "1", "--grad-accum", "1", "--lr", "1e-3", "--warmup-epochs", "0",
            *extra]


def test_parse_method_options():
    assert key_values(["beta=0.5", "retain_loss=kl", "trainable_layers=[0, 1]"], "-o") == {
        "beta": 0.5, "retain_loss": "kl", "trainable_layers": [0, 1]}
    with pytest.raises(UnlearnscopeError, match="-o 'beta': expected KEY=VALUE"):
        key_values(["beta"], "-o")
    assert named_key_values(["npo.lr=1e-4", "rmu.steering_coeff=20", "npo.beta=0.1"],
                            ["npo", "rmu", "simnpo"], "-s", "method") == {
        "npo": {"lr": 1e-4, "beta": 0.1}, "rmu": {"steering_coeff": 20}, "simnpo": {}}
    with pytest.raises(UnlearnscopeError, match="method 'ga' is not one of npo"):
        named_key_values(["ga.lr=1"], ["npo"], "-s", "method")
    with pytest.raises(UnlearnscopeError, match=r"expected NAME\.KEY=VALUE"):
        named_key_values(["npo=1"], ["npo"], "-s", "method")


def test_method_option_help_names_every_method_setting(capsys):
    """Every option a method accepts, and the choices of `setting` and `nll_weighting`."""
    words = set(re.findall(r"[a-z_-]+", METHOD_OPTIONS_HELP))
    for cls in METHODS.values():
        assert set(UnlearningMethod.defaults) | set(cls.defaults) <= words, cls.name
    assert {*RMU_SETTINGS, *NLL_WEIGHTINGS, "auto", "hidden_mse"} <= words
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    assert "steering_scale" in capsys.readouterr().out


def test_unlearn_cli_one_process(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(unlearn_args(workspace, out, "--no-save", "--method-option", "alpha=0.5")) == 0
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    assert len(outcomes) == 4 and outcomes["loss_after"].notna().all()
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "unlearn" and config["options"]["method"] == "grad_diff"
    assert config["options"]["settings"]["lr"] == 1e-3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_options"]["alpha"] == 0.5 and summary["steps"] == 8
    assert not (out / "model").exists()
    assert "mean efficacy" in capsys.readouterr().out
    assert main(unlearn_args(workspace, tmp_path / "bad", "--method-option", "bogus=1")) == 2


def test_unlearn_cli_with_several_seeds_writes_one_run_per_seed(workspace, tmp_path, capsys,
                                                                 monkeypatch):
    out = tmp_path / "seeds"
    assert main(unlearn_args(workspace, out, "--seeds", "0,2")) == 0
    assert "seed 2: mean efficacy" in capsys.readouterr().out
    found = read_seed_outcomes(out)
    assert sorted(found) == [0, 2]
    for seed in (0, 2):
        summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
        assert summary["settings"]["seed"] == seed
        assert not (out / f"seed{seed}" / "model").exists()  # no model per seed by default
    assert not (out / "outcomes.parquet").exists()
    assert json.loads((out / "config.json").read_text())["options"]["seeds"] == [0, 2]
    # each seed starts from the untouched model: the same as a separate run with that seed
    alone = tmp_path / "alone"
    assert main(unlearn_args(workspace, alone, "--seed", "2", "--no-save")) == 0
    pd.testing.assert_frame_equal(found[2], pd.read_parquet(alone / "outcomes.parquet"))
    assert not found[0]["loss_after"].equals(found[2]["loss_after"])

    calls = []
    monkeypatch.setattr(unlearn_cli, "run_unlearning",
                        lambda *a, **k: calls.append(k["config"].seed))
    assert main(unlearn_args(workspace, out, "--seeds", "0,2", "--resume")) == 0
    assert calls == []  # both seeds finished: nothing rerun
    assert main(unlearn_args(workspace, out, "--seeds", "0,0")) == 2
    assert "distinct seeds" in capsys.readouterr().err


def test_a_seed_killed_while_writing_its_products_is_rerun_on_resume(workspace, tmp_path,
                                                                     monkeypatch):
    """`--seeds --resume` keeps a seed whose folder has outcomes.parquet: that file must be
    its last product, or a kill after it loses the seed's summary and training log."""
    out = tmp_path / "seeds"
    args = unlearn_args(workspace, out, "--seeds", "0,2", "--no-save")
    real_write = trainer.write_parquet

    def killed_at_seed_2s_training_log(path, frame):
        if path == out / "seed2" / "training.parquet":
            raise KeyboardInterrupt
        real_write(path, frame)

    monkeypatch.setattr(trainer, "write_parquet", killed_at_seed_2s_training_log)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(trainer, "write_parquet", real_write)
    assert main([*args, "--resume"]) == 0
    alone = tmp_path / "alone"
    assert main(unlearn_args(workspace, alone, "--seed", "2", "--no-save")) == 0
    for name in ("outcomes.parquet", "training.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / "seed2" / name),
                                      pd.read_parquet(alone / name))
    assert json.loads((out / "seed2" / "summary.json").read_text()) == \
        json.loads((alone / "summary.json").read_text())


@pytest.mark.slow
def test_unlearn_cli_two_processes_with_torchrun(workspace, tmp_path):
    out = tmp_path / "ddp"
    done = torchrun(*unlearn_args(workspace, out, "--checkpoint-every", "1", "--track-every", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4  # 4 forget samples, batch 1 x 2 processes, 2 epochs
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    assert outcomes["sample_id"].tolist() == ["s0", "s1", "s2", "s3"]
    assert (outcomes["delta_loss"] != 0).all()
    assert sorted(pd.read_parquet(out / "trajectory.parquet")["step"].unique()) == [0, 2, 4]
    assert (out / "model" / "config.json").is_file() and not (out / "checkpoint").exists()


@pytest.mark.slow
def test_unlearn_cli_rmu_trains_every_reachable_parameter_under_two_processes(workspace,
                                                                              tmp_path):
    """RMU's reference setting (all parameters) under DDP: the parameters above the steered
    block get no gradient, and DDP used to stop at step 2 ("Expected to have finished
    reduction"); they are frozen now, and the gradients are reduced: 2 processes x batch 1
    give one process's batch-2 run."""
    rmu = ("--method", "rmu", "--method-option", "layer=0", "--method-option", "steering_coeff=5",
           "--no-save")
    out = tmp_path / "rmu"
    done = torchrun(*unlearn_args(workspace, out, *rmu))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    assert (outcomes["delta_loss"] != 0).all()
    single = tmp_path / "single"
    assert main(unlearn_args(workspace, single, *rmu, "--batch-size", "2")) == 0
    pd.testing.assert_frame_equal(outcomes, pd.read_parquet(single / "outcomes.parquet"),
                                  rtol=1e-5)


def steps_args(root, out, *extra):
    return ["steps-to-forget", "--model", str(root / "model"), "--method", "grad_ascent",
            "--data", f"jsonl:{root / 'forget.jsonl'}?id_field=id", "--out", str(out),
            "--lr", "2e-3", "--max-steps", "8", *extra]


def test_steps_to_forget_cli_one_process(workspace, tmp_path, capsys):
    out = tmp_path / "steps"
    assert main(steps_args(workspace, out, "--copies", "2")) == 0
    table = pd.read_parquet(out / "steps_to_forget.parquet")
    assert table["sample_id"].tolist() == ["s0", "s1", "s2", "s3"]
    assert ((table["steps_to_forget"] >= 1) & (table["steps_to_forget"] <= 8)).all()
    assert json.loads((out / "config.json").read_text())["command"] == "steps-to-forget"
    assert "samples forgotten within 8 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_steps_to_forget_cli_two_processes_matches_one(workspace, tmp_path):
    single = tmp_path / "single"
    assert main(steps_args(workspace, single, "--copies", "2")) == 0
    out = tmp_path / "ddp"
    done = torchrun(*steps_args(workspace, out, "--copies", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(out.glob("progress-*.jsonl")) == [out / "progress-0.jsonl",
                                                    out / "progress-1.jsonl"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "steps_to_forget.parquet"),
                                  pd.read_parquet(single / "steps_to_forget.parquet"), rtol=1e-5)
