"""Sizes, epochs and learning rates that cannot run are refused by the parser, before any
model is loaded or any file is written."""

import pytest

from unlearnscope.cli import main

DATA = "synthetic:authors?n_authors=2&questions_per_author=2"


@pytest.mark.parametrize("argv, option", [
    (["score", "--model", "m", "--data", DATA, "--batch-size", "-2"], "--batch-size"),
    (["score", "--model", "m", "--data", DATA, "--chunk-size", "0"], "--chunk-size"),
    (["score", "--model", "m", "--data", DATA, "--max-samples", "0"], "--max-samples"),
    (["score", "--model", "m", "--data", DATA, "--max-samples", "-1"], "--max-samples"),
    (["circuits", "--model", "m", "--data", DATA, "--shard-size", "0"], "--shard-size"),
    (["finetune", "--model", "tiny", "--data", DATA, "--epochs", "0"], "--epochs"),
    (["finetune", "--model", "tiny", "--data", DATA, "--lr", "0"], "--lr"),
    (["finetune", "--model", "tiny", "--data", DATA, "--grad-accum", "0"], "--grad-accum"),
    (["unlearn", "--model", "m", "--forget", DATA, "--method", "npo", "--lr", "-1e-5"],
     "--lr"),
    (["unlearn", "--model", "m", "--forget", DATA, "--method", "npo", "--batch-size", "0"],
     "--batch-size"),
])
def test_impossible_sizes_are_refused_before_anything_is_written(tmp_path, capsys, argv,
                                                                 option):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(out)])
    assert stop.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err
    assert not out.exists()


def test_sizes_and_rates_show_their_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("random seed (default: 0)", "training epochs (default: 3)",
                   "peak learning rate (default: 1e-05)", "samples per batch (default: 8)"):
        assert phrase in text
