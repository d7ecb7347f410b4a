"""What a researcher meets when an input is wrong: a named error (exit code 2) instead of a
traceback, a silent no-op or a run that mixes settings, and no half-written output folder."""

import copy
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from unlearnscope import pipeline
from unlearnscope.cli import main
from unlearnscope.errors import DataError
from unlearnscope.pipeline import PipelineConfig, run_demo
from unlearnscope.runs import read_json
from unlearnscope.unlearning import trainer

DATA = "synthetic:authors?n_authors=2&questions_per_author=2"


def _refused(argv, capsys) -> str:
    """Run the CLI; assert it refused as a user error (exit code 2, from the command or from
    the argument parser) and return its stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2
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
    ["evaluate", "--benchmark", "synthetic", "--data-options", "n_authors=2"],
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


# ---- 3. tracebacks and silent runs become named errors -------------------------------------


def test_a_data_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"question": "Who?", "answer": "Ann."}\n'
                    '{"question": "Où?", "answer": "Là."}\n'.encode("latin-1"))
    out = tmp_path / "out"
    err = _refused(["score", "--model", str(tmp_path / "no-model"), "--data", f"jsonl:{bad}",
                    "--out", str(out)], capsys)
    assert f"{bad}, line 2: not UTF-8" in err
    assert not out.exists()
    config = tmp_path / "run.json"
    config.write_bytes('{\n  "tofu_dir": "données"\n}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"run\.json, line 2: not UTF-8"):
        read_json(config)


@pytest.mark.parametrize("damage", ["truncated", "bad header"])
def test_a_damaged_safetensors_file_is_named(tiny_model_dir, tmp_path, capsys, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if damage == "truncated"
                        else (20).to_bytes(8, "little") + b'{"not": "a header"' + data[26:])
    out = tmp_path / "out"
    err = _refused(["score", "--model", str(folder), "--data", DATA, "--out", str(out)], capsys)
    assert f"{weights}:" in err and "safetensors" in err
    assert not (out / "config.json").exists()


def test_out_naming_an_existing_file_is_refused_before_the_model_loads(tmp_path, capsys):
    taken = tmp_path / "scores.parquet"
    taken.write_text("not a folder")
    for out in (taken, taken / "run"):
        err = _refused(["score", "--model", str(tmp_path / "no-model"), "--data", DATA,
                        "--out", str(out)], capsys)
        assert f"{taken} is a file" in err and "not found" not in err
    err = _refused(["demo", "--out", str(taken)], capsys)  # --out has a default there
    assert f"{taken} is a file" in err
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("inside", [False, True])
def test_a_read_only_output_folder_is_named(tmp_path, capsys, monkeypatch, inside):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: answer access() as for everyone else
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            not mode & os.W_OK and real_access(path, mode, **kw)) if Path(path) == locked
            else real_access(path, mode, **kw))
    out = locked / "run" if inside else locked
    try:
        err = _refused(["score", "--model", str(tmp_path / "no-model"), "--data", DATA,
                        "--out", str(out)], capsys)
    finally:
        locked.chmod(0o755)
    assert f"{locked} is not writable" in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(("option", "named"), [
    ("mrd.k=0", "field 'k'"),
    ("mrd.sigma=-1", "field 'sigma'"),
    ("mrd.sigma=small", "field 'sigma'"),
    ("mrd.bogus=1", "field 'bogus'"),
    ("loss.k=3", "field 'k'"),
    ("min_k.k=0", "field 'k'"),
    ("min_k.k=1.5", "field 'k'"),
])
def test_impossible_scorer_options_are_named_before_anything_is_written(tmp_path, capsys,
                                                                        option, named):
    out = tmp_path / "out"
    err = _refused(["score", "--model", str(tmp_path / "no-model"), "--data", DATA,
                    "--scorers", "loss,mrd,min_k", "--scorer-option", option,
                    "--out", str(out)], capsys)
    assert f"scorer '{option.split('.')[0]}', {named}" in err
    assert not out.exists()


def test_min_k_takes_every_fraction_up_to_1(tiny_model_dir, tmp_path):
    assert main(["score", "--model", str(tiny_model_dir), "--data", DATA, "--scorers",
                 "min_k", "--scorer-option", "min_k.k=1", "--out", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("spec", ["runs/target", "./x", "/no/such/model"])
def test_a_missing_path_like_model_is_not_found_locally(tmp_path, capsys, monkeypatch, spec):
    def no_hub(*args, **kwargs):
        raise AssertionError("hub lookup")

    monkeypatch.setattr("unlearnscope.models.loading._from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    err = _refused(["score", "--model", spec, "--data", DATA, "--out", "out"], capsys)
    assert "not found" in err
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_hub_like_model_spec_found_neither_locally_nor_in_the_hub_cache_is_not_found(
        tmp_path, capsys, monkeypatch, no_network):
    """`runs/target` without a `runs/` folder is also a valid hub id; the local hub cache has
    no such model, so the error says so at once, naming the local folder looked for and the
    `hub:` spec that would download it. The network is never asked."""
    monkeypatch.chdir(tmp_path)
    err = _refused(["score", "--model", "runs/target", "--data", DATA, "--out", "out"], capsys)
    assert f"model 'runs/target' not found: no folder {tmp_path / 'runs' / 'target'}" in err
    assert "hub:runs/target" in err
    assert not (tmp_path / "out" / "config.json").exists()


def _score_and_outcome_files(root: Path) -> tuple[Path, Path]:
    ids = [f"s{i}" for i in range(12)]
    efficacy = np.linspace(0.1, 0.9, 12)
    scores = root / "scores.parquet"
    pd.DataFrame({"sample_id": ids, "scorer": "loss", "value": -efficacy,
                  "difficulty": -efficacy}).to_parquet(scores)
    outcomes = root / "npo" / "outcomes.parquet"
    outcomes.parent.mkdir()
    pd.DataFrame({"sample_id": ids, "efficacy": efficacy}).to_parquet(outcomes)
    return scores, outcomes


def test_exclude_ids_that_match_no_sample_are_a_warning(tmp_path, caplog):
    scores, outcomes = _score_and_outcome_files(tmp_path)
    anchors = tmp_path / "other_run_anchors.json"
    anchors.write_text(json.dumps({"fit_ids": ["forget10-00001", "forget10-00002"]}))
    args = ["validate", "--scores", str(scores), "--outcomes", str(outcomes), "--out",
            str(tmp_path / "out"), "--n-boot", "20", "--exclude-ids", str(anchors)]
    with caplog.at_level(logging.WARNING, logger="unlearnscope.cli.validate"):
        assert main(args) == 0
    assert f"--exclude-ids {anchors}: none of its 2 ids" in caplog.text
    caplog.clear()
    anchors.write_text(json.dumps({"fit_ids": ["s1", "forget10-00002"]}))
    with caplog.at_level(logging.WARNING, logger="unlearnscope.cli.validate"):
        assert main(args) == 0
    assert caplog.text == ""


def test_anchors_missing_column_names_the_file(tmp_path, capsys):
    outcomes = tmp_path / "npo" / "outcomes.parquet"
    outcomes.parent.mkdir()
    pd.DataFrame({"sample_id": ["a", "b"], "loss_after": [1.0, 2.0]}).to_parquet(outcomes)
    out = tmp_path / "anchors"
    err = _refused(["anchors", "--method", "vote", "--k", "1", "--outcomes", str(outcomes),
                    "--out", str(out)], capsys)
    assert f"{outcomes}, field 'efficacy': missing column" in err
    assert not out.exists()


# ---- 4. resume and stage-skip check the recorded settings ----------------------------------


def test_score_resume_with_another_scorer_option_is_refused_naming_it(tiny_model_dir, tmp_path,
                                                                      capsys):
    out = tmp_path / "run"
    first = ["score", "--model", str(tiny_model_dir), "--data", DATA, "--out", str(out),
             "--scorers", "loss,mrd", "--scorer-option", "mrd.k=2"]
    assert main(first) == 0
    recorded = (out / "config.json").read_bytes()
    err = _refused([*first, "--scorer-option", "mrd.sigma=1e-3", "--resume"], capsys)
    assert "field 'mrd.sigma'" in err and "mrd.sigma: 1e-05 -> 0.001" in err
    assert (out / "config.json").read_bytes() == recorded
    # the recorded options resume; a scorer new to the folder is free to join
    assert main([*first, "--resume"]) == 0
    assert main([*first[:-4], "--scorers", "loss,mrd,prob", "--scorer-option", "mrd.k=2",
                 "--resume"]) == 0


def _unlearn_args(model_dir, out, *extra):
    return ["unlearn", "--model", str(model_dir), "--forget", DATA, "--method", "npo",
            "--method-option", "alpha=0", "--epochs", "2", "--warmup-epochs", "0", "--lr",
            "1e-3", "--no-save", "--out", str(out), *extra]


@pytest.mark.parametrize(("change", "named"), [
    (["--lr", "2e-3"], "lr: 0.001 -> 0.002"),
    (["--method-option", "beta=0.5"], "npo.beta: 0.1 -> 0.5"),
    (["--epochs", "3"], "epochs: 2 -> 3"),
])
@pytest.mark.parametrize("seeds", [[], ["--seeds", "0,1"]])
def test_unlearn_resume_with_other_settings_is_refused_naming_them(tiny_model_dir, tmp_path,
                                                                   capsys, change, named,
                                                                   seeds):
    out = tmp_path / "run"
    assert main(_unlearn_args(tiny_model_dir, out, *seeds)) == 0
    recorded = (out / "config.json").read_bytes()
    err = _refused([*_unlearn_args(tiny_model_dir, out, *seeds), *change, "--resume"], capsys)
    assert named in err
    assert (out / "config.json").read_bytes() == recorded
    assert main([*_unlearn_args(tiny_model_dir, out, *seeds), "--resume",
                 "--checkpoint-every", "1"]) == 0


def test_run_unlearning_resumed_with_other_settings_is_refused(tiny_lm, small_samples,
                                                               tmp_path):
    model, tokenizer = tiny_lm
    settings = {"max_steps": 1, "warmup_epochs": 0.0, "lr": 1e-3}
    trainer.run_unlearning(copy.deepcopy(model), tokenizer, small_samples, [], "grad_ascent",
                           out_dir=tmp_path, save=False, **settings)
    with pytest.raises(DataError, match=r"max_steps: 1 -> 2"):
        trainer.run_unlearning(copy.deepcopy(model), tokenizer, small_samples, [],
                               "grad_ascent", out_dir=tmp_path, save=False, resume=True,
                               **{**settings, "max_steps": 2})


class _Stop(Exception):
    """Raised in place of the demo's first stage: the rerun check has passed by then."""


@pytest.fixture
def demo_until_the_first_stage(monkeypatch):
    def stop(demo):
        raise _Stop

    monkeypatch.setattr(pipeline, "_models", stop)


def test_demo_rerun_that_would_change_products_is_refused(demo_until_the_first_stage,
                                                          tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(_Stop):
        main(["demo", "--out", str(out)])
    recorded = (out / "config.json").read_bytes()
    err = _refused(["demo", "--out", str(out), "--seed", "1", "--lr", "1e-3"], capsys)
    assert "lr: 0.003 -> 0.001" in err and "seed: 0 -> 1" in err
    assert (out / "config.json").read_bytes() == recorded
    err = _refused(["demo", "--out", str(out), "--method-setting", "npo.beta=0.3"], capsys)
    assert "method_settings" in err


def test_demo_rerun_may_add_methods_seeds_scorers_and_experiments(demo_until_the_first_stage,
                                                                  tmp_path):
    out = tmp_path / "demo"
    first = PipelineConfig(methods=("npo",), seeds={}, set_methods=(), schedule_methods=())
    with pytest.raises(_Stop):
        run_demo(out, first)
    extended = dataclasses.replace(
        first, methods=("npo", "grad_diff"), seeds={"npo": (0, 1, 2)},
        scorers=(*first.scorers, "cud_paper"), set_methods=("npo",),
        schedule_methods=("npo",), steps_to_forget_methods=("npo", "grad_diff"),
        paper_preset=False, schedule_budget=20)
    with pytest.raises(_Stop):
        run_demo(out, extended)
    assert read_json(out / "config.json")["options"]["methods"] == ["npo", "grad_diff"]
