"""What a researcher meets when an input is wrong: a named error (exit code 2) instead of a
traceback, a silent no-op or a run that mixes settings, and no half-written output folder."""

import pytest

from unlearnscope.cli import main

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
