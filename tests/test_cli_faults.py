"""What a researcher meets when an input is wrong: a named error (exit code 2) instead of a
traceback, a silent no-op or a run that mixes settings, and no half-written output folder."""

import logging

import pandas as pd
import pytest
import torch

from unlearnscope.cli import main
from unlearnscope.runs import read_json
from unlearnscope.unlearning import trainer

DATA = "synthetic:authors?n_authors=2&questions_per_author=2"


def _refused(argv, capsys) -> str:
    """Run the CLI; assert it refused as a user error and return its stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


# ---- 1. --max-length over the model's position limit ---------------------------------------


@pytest.mark.parametrize("command", [
    ["score", "--data", DATA],
    ["circuits", "--data", DATA],
    ["unlearn", "--forget", DATA, "--method", "grad_ascent", "--epochs", "1",
     "--warmup-epochs", "0"],
    ["finetune", "--data", DATA, "--epochs", "1"],
    ["steps-to-forget", "--data", DATA, "--method", "grad_ascent"],
    ["anchors", "--method", "bilevel", "--k", "1", "--data", DATA],
])
def test_max_length_over_the_models_positions_is_refused(tiny_model_dir, tmp_path, capsys,
                                                         command):
    out = tmp_path / "out"
    err = _refused([*command, "--model", str(tiny_model_dir), "--out", str(out),
                    "--max-length", "4096"], capsys)
    assert "--max-length 4096" in err and "256" in err  # the tiny model has 256 positions
    assert not (out / "config.json").exists()


def test_max_length_within_the_models_positions_still_runs(tiny_model_dir, tmp_path):
    assert main(["score", "--model", str(tiny_model_dir), "--data", DATA, "--scorers", "loss",
                 "--out", str(tmp_path / "out"), "--max-length", "256"]) == 0


# ---- 2. a warm-up that leaves no optimizer step at lr > 0 ----------------------------------


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0,1"]])
def test_a_warm_up_over_every_step_is_refused_before_the_model_loads(tmp_path, capsys, seeds):
    """4 forget samples, a global batch of 16: one step per epoch, and the default warm-up of
    one epoch makes that step the warm-up's first, at lr 0. The model does not exist: the
    refusal has to come before it is looked for."""
    out = tmp_path / "out"
    err = _refused(["unlearn", "--model", str(tmp_path / "no-model"), "--forget", DATA,
                    "--method", "grad_ascent", "--epochs", "1", "--out", str(out), *seeds],
                   capsys)
    assert "--warmup-epochs" in err and "1 of the run's 1 optimizer step" in err
    assert "not found" not in err and not out.exists()


def test_the_steps_at_lr_above_0_are_recorded(tiny_model_dir, tmp_path):
    """Two steps, one of warm-up: the linear schedule runs step 1 at lr 0 and step 2 at the
    peak, so one step counts, in config.json, summary.json and training.parquet alike."""
    out = tmp_path / "out"
    assert main(["unlearn", "--model", str(tiny_model_dir), "--forget", DATA, "--method",
                 "grad_ascent", "--epochs", "2", "--lr", "1e-3", "--no-save",
                 "--out", str(out)]) == 0
    training = pd.read_parquet(out / "training.parquet")
    assert training.lr.tolist() == [0.0, 1e-3]
    assert read_json(out / "summary.json")["steps_with_lr"] == 1
    assert read_json(out / "config.json")["options"]["steps_with_lr"] == 1


def test_fewer_than_half_the_steps_at_lr_above_0_is_a_warning(monkeypatch, caplog):
    """No transformers schedule leaves more than the first step at 0; a schedule that does is
    warned about, with the count."""
    def late_start(name, optimizer, num_warmup_steps, num_training_steps):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(step >= 3))

    monkeypatch.setattr(trainer, "get_scheduler", late_start)
    plan = trainer.plan_steps(trainer.UnlearnConfig(max_steps=4), n_forget=4, processes=1)
    assert plan.steps_with_lr == 1
    with caplog.at_level(logging.WARNING, logger="unlearnscope.unlearning.trainer"):
        trainer.warn_about_idle_steps(plan)
    assert "only 1 of the run's 4 optimizer steps" in caplog.text
