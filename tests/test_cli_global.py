"""Options of the main parser that every command shares: --threads, and quiet model loading."""

import pandas as pd
import pytest
import torch
from transformers import modeling_gguf_pytorch_utils
from transformers.utils import logging as transformers_logging

from unlearnscope.cli import build_parser, main
from unlearnscope.progress import quiet_transformers

DATA = "synthetic:authors?n_authors=4&questions_per_author=3"


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def transformers_bars_restored():
    """Undo `quiet_transformers` after the test, as other tests may expect the defaults."""
    enabled = transformers_logging.is_progress_bar_enabled()
    gguf_tqdm = modeling_gguf_pytorch_utils.tqdm
    yield
    if enabled:
        transformers_logging.enable_progress_bar()
    modeling_gguf_pytorch_utils.tqdm = gguf_tqdm


def _weights_args(tmp_path):
    scores = tmp_path / "scores.parquet"
    pd.DataFrame({"sample_id": ["forget01-00000", "forget01-00001"], "scorer": "loss",
                  "value": [1.0, 2.0], "difficulty": [-1.0, -2.0]}).to_parquet(scores)
    return ["export-weights", "--scores", str(scores), "--scorer", "loss",
            "--out", str(tmp_path / "weights.json")]


@pytest.mark.usefixtures("restore_torch_threads", "transformers_bars_restored")
@pytest.mark.parametrize("where", ["before", "after"])
def test_threads_sets_torch_threads_before_the_command(where, tmp_path):
    torch.set_num_threads(1)
    command = _weights_args(tmp_path)
    argv = ["--threads", "2", *command] if where == "before" else [*command, "--threads", "2"]
    assert main(argv) == 0
    assert torch.get_num_threads() == 2
    assert (tmp_path / "weights.json").is_file()


@pytest.mark.usefixtures("restore_torch_threads", "transformers_bars_restored")
def test_without_threads_torch_keeps_its_own_count(tmp_path):
    torch.set_num_threads(1)
    assert main(_weights_args(tmp_path)) == 0
    assert torch.get_num_threads() == 1


def test_after_the_command_name_overrides_before_it():
    parser = build_parser()
    assert parser.parse_args(["--threads", "3", "report", "DIR"]).threads == 3
    assert parser.parse_args(["--threads", "3", "report", "DIR", "--threads", "4"]).threads == 4
    assert parser.parse_args(["report", "DIR"]).threads is None
    assert parser.parse_args(["circuits", "analyze", "DIR", "--threads", "2"]).threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_thread_counts_are_refused(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--threads", value, "report", "DIR"])
    assert info.value.code == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.usefixtures("transformers_bars_restored")
def test_commands_draw_no_transformers_bars(tiny_model_dir, tmp_path, capfd):
    transformers_logging.enable_progress_bar()
    assert main(["score", "--model", str(tiny_model_dir), "--data", DATA, "--out",
                 str(tmp_path / "run"), "--scorers", "loss"]) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err


@pytest.mark.usefixtures("transformers_bars_restored")
def test_quiet_transformers_silences_saving_and_gguf_bars(tiny_lm, tmp_path, capfd):
    transformers_logging.enable_progress_bar()
    quiet_transformers()
    model, _ = tiny_lm
    model.save_pretrained(tmp_path / "model")
    # the bar object load_gguf_checkpoint draws while it converts a GGUF file's tensors
    for _ in modeling_gguf_pytorch_utils.tqdm(range(3), desc="Converting GGUF tensors"):
        pass
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "GGUF" not in err, err
    assert (tmp_path / "model" / "model.safetensors").is_file()
