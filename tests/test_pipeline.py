import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from unlearnscope import pipeline
from unlearnscope.cli import demo as cli_demo
from unlearnscope.cli import main
from unlearnscope.cli.demo import method_seeds, method_settings
from unlearnscope.errors import DataError, UnlearnscopeError
from unlearnscope.evaluation import experiments
from unlearnscope.layout import read_seed_outcomes
from unlearnscope.pipeline import PHASE_NAMES, PipelineConfig, load_pipeline_config, run_demo


def test_demo_samples_default_to_synthetic_authors():
    forget, retain, holdout = PipelineConfig(n_authors=5, questions_per_author=2).samples()
    assert len(forget) == 2 and len(retain) == 8 and len(holdout) == 2
    assert {s.get("author") for s in forget}.isdisjoint(s.get("author") for s in retain)


def test_demo_samples_on_a_tofu_folder(tmp_path):
    def write(name, n, perturbed=False):
        rows = [{"question": f"{name} Q{i}?", "answer": f"A{i}."} for i in range(n)]
        if perturbed:
            rows = [{**r, "paraphrased_answer": "P.", "perturbed_answer": ["X.", "Y."]}
                    for r in rows]
        (tmp_path / f"{name}.json").write_text("\n".join(json.dumps(r) for r in rows))

    write("forget01_perturbed", 40, perturbed=True)
    write("retain90", 3600)
    write("holdout01", 40)
    config = PipelineConfig(tofu_dir=str(tmp_path), forget_split="forget01", retain_authors=2)
    forget, retain, holdout = config.samples()
    assert len(forget) == 40 and forget[0].get("perturbed_answer") == ["X.", "Y."]
    assert len(retain) == 40 and {s.get("author") for s in retain} == {0, 1}
    assert [s.id for s in holdout][:2] == ["holdout01-00000", "holdout01-00001"]


def test_tiny_runs_keep_their_per_method_settings():
    config = PipelineConfig()
    assert config.unlearn_settings("rmu")["lr"] == 1e-2
    assert config.unlearn_settings("npo")["lr"] == config.unlearn["lr"]
    assert config.unlearn_settings("npo")["seed"] == config.seed


def test_a_minimal_run_writes_every_product_and_resumes(tmp_path, capsys, monkeypatch):
    """Every stage on a handful of synthetic samples, npo under two seeds; a second call finds
    every product and redoes nothing; a missing seed is redone alone."""
    config = PipelineConfig(
        scorers=tuple(n for n in PipelineConfig().scorers if n != "zlib"),
        n_authors=6, questions_per_author=4, forget_fraction=0.5, max_epochs=2, mrd_draws=4,
        ig_steps=2, methods=("grad_diff", "npo"), anchor_methods=("grad_diff", "npo"),
        seeds={"npo": (0, 1)}, steps_to_forget_methods=("npo",), steps_to_forget_max_steps=3,
        anchor_k=1, set_methods=("npo",), set_scorers=("loss", "mrd"), set_k=1,
        schedule_methods=("npo",), schedule_budget=2,
        unlearn={"epochs": 1, "lr": 5e-4, "batch_size": 4, "grad_accum": 1,
                 "warmup_epochs": 0.0})
    evaluated = []
    real_evaluate = pipeline.evaluate_tofu

    schedule_evaluations = []

    def counting(model, *args, **kwargs):
        if "holdout" in kwargs:  # a method's evaluation (the schedule runs pass no holdout)
            evaluated.append(model)
            assert kwargs["gradnorm"] is True  # the default keeps the gradient-norm MIA
        else:
            schedule_evaluations.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_tofu", counting)
    monkeypatch.setattr(experiments, "evaluate_tofu", counting)  # ScheduleMetrics'
    summary = run_demo(tmp_path, config)
    out = tmp_path
    assert len(evaluated) == 2  # TOFU evaluation once per method, not per seed
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"loss", "grad_norm", "mrd", "mrd_grad", "cud", "cud_paper", "answer_length",
            "answer_rarity", "predicted:npo", "predicted:mean"} <= set(scores.scorer)
    paper = json.loads((out / "paper" / "circuits" / "header.json").read_text())
    assert paper["method"] == "EAP-IG-activations" and paper["metric"] == "paper_prob_diff"
    for table in ("partial", "prediction", "cross_method", "cud_choice", "circuit_guided",
                  "depth_ablation", "claims"):
        assert (out / "validation" / f"{table}.csv").is_file(), table
    n_forget = summary["n_forget"]
    assert (scores.groupby("scorer").size() == n_forget).all()
    correlations = pd.read_csv(out / "validation" / "correlations.csv")
    assert {"mean", "grad_diff", "npo"} <= set(correlations.method)
    anchors = json.loads((out / "anchors" / "anchors.json").read_text())
    held_out = set(anchors["held_out_ids"])
    assert set(correlations.n) <= {len(held_out)}
    npo = out / "unlearn" / "npo"
    assert sorted(read_seed_outcomes(npo)) == [0, 1]
    assert (npo / "metrics.json").is_file() and not (npo / "seed1" / "metrics.json").exists()
    assert sorted(read_seed_outcomes(out / "unlearn" / "grad_diff")) == [0]
    reliability = pd.read_csv(out / "validation" / "reliability.csv")
    ceilings = reliability[reliability.kind == "ceiling"].set_index("method")
    assert ceilings.loc["npo", "n_seeds"] == 2 and ceilings.loc["npo", "n"] == len(held_out)
    assert np.isnan(ceilings.loc["grad_diff", "ceiling"])
    assert "one seed" in ceilings.loc["grad_diff", "note"]
    steps = reliability[reliability.kind == "agreement"]
    assert set(steps.ground_truth) == {"steps_to_forget", "interpolated_steps"}
    assert (out / "steps_to_forget" / "npo" / "steps_to_forget.parquet").is_file()
    sets = pd.read_csv(out / "validation" / "sets.csv")
    assert {"easy", "hard", "random"} <= set(sets.set)
    assert set(pd.read_csv(out / "validation" / "schedules.csv").method) == {"npo"}
    metrics = json.loads((npo / "metrics.json").read_text())
    assert metrics["benchmark"] == "synthetic" and metrics["forget_split"] == "synthetic:forget"
    assert "<html" in (out / "report.html").read_text()
    assert set(summary["methods"]) == {"grad_diff", "npo"}
    assert summary["methods"]["npo"]["seeds"] == 2
    first_timings = summary["timings_s"]
    printed = capsys.readouterr().out
    assert "reliability of measured difficulty" in printed

    again = run_demo(tmp_path, config)
    assert "[demo] fine-tune" not in capsys.readouterr().out  # every stage skipped
    assert again["methods"] == summary["methods"]
    assert set(again["timings_s"]) == set(first_timings)
    assert len(evaluated) == 2

    shutil.rmtree(npo / "seed1")
    (out / "report.html").unlink()
    run_demo(tmp_path, config)
    redone = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith(("[demo] unlearn the", "[demo] steps to forget"))]
    assert redone == ["[demo] unlearn the forget set with npo (seed 1)"]
    assert len(evaluated) == 2 and sorted(read_seed_outcomes(npo)) == [0, 1]
    (npo / "seed0" / "outcomes.parquet").unlink()  # the evaluated seed: rerun with its TOFU
    run_demo(tmp_path, config)
    redone = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith(("[demo] unlearn the", "[demo] steps to forget"))]
    assert redone == ["[demo] unlearn the forget set with npo (seed 0)"]
    assert len(evaluated) == 3

    # a scorer added to the config of the finished run is computed alone and merged in
    before = pd.read_parquet(out / "scores.parquet")
    run_demo(tmp_path, dataclasses.replace(config, scorers=(*config.scorers, "zlib")))
    stages = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("[demo] ") and not line.startswith("[demo] CUD")]
    scoring = [line for line in stages if "score" in line and "samples" in line]
    assert len(scoring) == 1 and scoring[0].endswith(", zlib")  # the logit scorers' stage
    after = pd.read_parquet(out / "scores.parquet")
    assert set(after.scorer) == set(before.scorer) | {"zlib"}
    kept = after[after.scorer != "zlib"].merge(before, on=["sample_id", "scorer"])
    assert len(kept) == len(before) and (kept.value_x == kept.value_y).all()

    # the schedule experiment with its own (schedule, scorer) list and without TOFU metrics
    schedules_csv = out / "validation" / "schedules.csv"
    default_rows = pd.read_csv(schedules_csv)
    assert len(schedule_evaluations) == len(default_rows)  # one per schedule run
    schedules_csv.unlink()
    run_demo(tmp_path, dataclasses.replace(
        config, schedules=(("uniform", None), ("hard-to-easy", "loss")),
        schedule_tofu_metrics=False))
    rows = pd.read_csv(schedules_csv)
    assert list(zip(rows.schedule, rows.scorer, strict=True)) == [
        ("uniform", "-"), ("hard-to-easy", "loss")]
    assert rows.forget_quality.isna().all() and rows.model_utility.isna().all()
    assert rows.efficacy.notna().all() and len(schedule_evaluations) == len(default_rows)


def test_method_settings_split_training_keys_from_method_options():
    base = PipelineConfig().method_settings
    settings = method_settings(["simnpo.lr=5e-4", "rmu.steering_coeff=20", "npo.beta=0.2",
                                "npo.epochs=2"], base)
    assert settings["simnpo"] == {"lr": 5e-4}
    assert settings["rmu"] == {"lr": 1e-2, "method_options": {
        "setting": "small-model", "layer": 2, "steering_coeff": 20, "alpha": 10.0}}
    assert settings["npo"] == {"epochs": 2, "method_options": {"beta": 0.2}}
    assert base["rmu"]["method_options"]["steering_coeff"] == 10.0  # the defaults untouched
    config = PipelineConfig(method_settings=settings)
    assert config.unlearn_settings("npo")["epochs"] == 2
    assert config.unlearn_settings("npo")["method_options"] == {"beta": 0.2}


def test_seeds_per_method_and_their_folders(tmp_path):
    config = PipelineConfig(seeds={"npo": (0, 1, 2)}, seed=5)
    assert config.method_seeds("npo") == (0, 1, 2) and config.method_seeds("rmu") == (5,)
    assert config.outcome_folder(tmp_path, "npo", 1) == tmp_path / "unlearn" / "npo" / "seed1"
    assert config.outcome_folder(tmp_path, "rmu", 5) == tmp_path / "unlearn" / "rmu"
    assert config.unlearn_settings("npo", 2)["seed"] == 2
    assert set(PipelineConfig().seeds) >= {"npo"} and len(PipelineConfig().seeds["npo"]) >= 2
    with pytest.raises(DataError, match="distinct seeds"):
        PipelineConfig(seeds={"npo": (1, 1)}).method_seeds("npo")
    assert method_seeds(["npo=3,4", "rmu=7"], {"npo": (0, 1)}) == {"npo": (3, 4), "rmu": (7,)}
    with pytest.raises(UnlearnscopeError, match="METHOD=S,S"):
        method_seeds(["nope=1"], {})


def test_a_run_config_file_gives_the_same_config_and_names_a_bad_field(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"forget_split": "forget05", "methods": ["npo", "rmu"],
                                "seeds": {"npo": [0, 1]}, "precision": "bf16-autocast"}))
    config = load_pipeline_config(path, tofu_dir="data/tofu")
    assert config == PipelineConfig(forget_split="forget05", methods=("npo", "rmu"),
                                seeds={"npo": [0, 1]}, precision="bf16-autocast",
                                tofu_dir="data/tofu")
    assert config.method_seeds("npo") == (0, 1)
    assert config.unlearn_settings("npo")["precision"] == "bf16-autocast"
    path.write_text(json.dumps({"forget_splitt": "forget05"}))
    with pytest.raises(DataError, match=r"run\.json.*field 'forget_splitt'"):
        load_pipeline_config(path)
    path.write_text(json.dumps({"methods": "npo"}))
    with pytest.raises(DataError, match=r"field 'methods': expected a list"):
        load_pipeline_config(path)


def test_demo_config_file_refuses_options_it_would_ignore(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"forget_split": "forget05", "mrd_draws": 7}))
    assert main(["demo", "--config", str(path), "--seed", "3", "--out", str(tmp_path / "r")]) == 2
    assert "drop --seed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    ran = []
    monkeypatch.setattr(cli_demo, "run_demo",
                        lambda out, config, stop_after: ran.append((out, config, stop_after)))
    assert main(["demo", "--config", str(path), "--tofu-dir", "data/tofu",
                 "--out", str(tmp_path / "r"), "--stop-after", "scores"]) == 0
    assert ran == [(str(tmp_path / "r"), PipelineConfig(forget_split="forget05", mrd_draws=7,
                                                        tofu_dir="data/tofu"), "scores")]


def test_stop_after_ends_the_run_after_that_phase_and_a_rerun_goes_on(tmp_path, capsys):
    config = PipelineConfig(n_authors=4, questions_per_author=2, forget_fraction=0.5,
                            max_epochs=1, methods=("npo",), anchor_methods=("npo",), seeds={},
                            set_methods=(), schedule_methods=(),
                            unlearn={"epochs": 1, "lr": 5e-4, "batch_size": 4,
                                     "grad_accum": 1, "warmup_epochs": 0.0})
    assert run_demo(tmp_path, config, stop_after="models") is None
    assert "stopped after 'models'" in capsys.readouterr().out
    assert (tmp_path / "target").is_dir() and (tmp_path / "retain").is_dir()
    assert not (tmp_path / "unlearn").exists() and not (tmp_path / "scores.parquet").exists()
    target_written = (tmp_path / "target" / "model" / "model.safetensors").stat().st_mtime_ns
    assert run_demo(tmp_path, config, stop_after="unlearn") is None
    assert (tmp_path / "unlearn" / "npo" / "outcomes.parquet").is_file()
    assert not (tmp_path / "scores.parquet").exists() and not (tmp_path / "summary.json").exists()
    # the finished phase was skipped, not redone
    assert (tmp_path / "target" / "model" / "model.safetensors").stat().st_mtime_ns == \
        target_written
    with pytest.raises(DataError, match=r"unknown phase 'score'.*scores"):
        run_demo(tmp_path, config, stop_after="score")
    assert PHASE_NAMES[0] == "models" and PHASE_NAMES[-1] == "report"
