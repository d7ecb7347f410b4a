"""`unlearnscope circuits` end to end on the tiny Llama: compute, resume, analyze, export,
two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

from unlearnscope.circuits import attribute
from unlearnscope.circuits.compute import ATTRIBUTION_PRESETS, compute_circuits
from unlearnscope.circuits.store import CircuitStore, shard_files
from unlearnscope.cli import main
from unlearnscope.cli.circuits import read_groups
from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import collate, encode_samples
from unlearnscope.errors import DataError
from unlearnscope.models import load_model

DATA = "synthetic:authors?n_authors=4&questions_per_author=3"
N_SAMPLES = 5
IDS = [s.id for s in load_samples(DATA)[:N_SAMPLES]]


def run_args(model_dir, out) -> list[str]:
    return ["circuits", "--model", str(model_dir), "--data", DATA, "--max-samples",
            str(N_SAMPLES), "--out", str(out), "--ig-steps", "3", "--batch-size", "2",
            "--shard-size", "2", "--top-n", "20"]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("circuits_cli") / "run"
    assert main(run_args(tiny_model_dir, out)) == 0
    return tiny_model_dir, out


def float16_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    peak = b.abs().flatten(1).amax(dim=1).view(-1, 1, 1)
    return bool(((a - b).abs() <= b.abs() * 2.0**-10 + peak * 1e-5).all())


def test_run_stores_every_sample_with_its_settings(tiny_run) -> None:
    model_dir, out = tiny_run
    store = CircuitStore.open(out / "circuits")
    assert sorted(store.sample_ids) == sorted(IDS)
    assert len(shard_files(out / "circuits")) == 3
    header = store.header
    assert (header["n_layers"], header["n_heads"], header["d_model"]) == (2, 4, 32)
    assert (header["method"], header["ig_steps"], header["baseline"], header["rule"],
            header["metric"]) == ("EAP-IG-inputs", 3, "zero", "left", "answer_logprob")
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "circuits" and config["options"]["ig_steps"] == 3
    # the stored scores of a sample are its own attribution, computed alone
    model, tokenizer = load_model(str(model_dir))
    samples = load_samples(DATA)
    encoded = encode_samples(tokenizer, [samples[3]]).samples
    alone = attribute(model, collate(encoded, tokenizer.pad_token_id), ig_steps=3).scores
    assert alone.abs().max() > 0
    assert float16_close(store.scores([samples[3].id]), alone)


def test_resume_recomputes_only_missing_samples(tiny_run, tmp_path) -> None:
    model_dir, out = tiny_run
    before = CircuitStore.open(out / "circuits")
    ids = sorted(before.sample_ids)
    expected = before.scores(ids)
    resumed = tmp_path / "resumed"
    (resumed / "circuits").mkdir(parents=True)
    shards = shard_files(out / "circuits")
    for shard in shards[:2]:  # the run was killed after two shards
        (resumed / "circuits" / shard.name).write_bytes(shard.read_bytes())
    (resumed / "circuits" / "header.json").write_bytes((out / "circuits" /
                                                        "header.json").read_bytes())
    kept = {p.name: p.stat().st_mtime_ns for p in shard_files(resumed / "circuits")}
    resume_args = [*run_args(model_dir, resumed), "--resume"]
    assert main(resume_args) == 0
    after = CircuitStore.open(resumed / "circuits")
    assert sorted(after.sample_ids) == ids
    assert {p.name: p.stat().st_mtime_ns for p in shard_files(resumed / "circuits")
            if p.name in kept} == kept
    assert float16_close(after.scores(ids), expected)
    # resuming with other settings is refused (exit 2, nothing written, config.json kept)
    config = (resumed / "config.json").read_bytes()
    assert main([*resume_args, "--rule", "midpoint"]) == 2
    assert (resumed / "config.json").read_bytes() == config


def test_paper_preset_sets_the_cud_authors_attribution(tiny_model_dir, tmp_path,
                                                        capsys) -> None:
    args = ["circuits", "--model", str(tiny_model_dir), "--data", DATA, "--max-samples", "2",
            "--out", str(tmp_path / "paper"), "--preset", "paper", "--top-n", "20"]
    assert main(args) == 0
    header = CircuitStore.open(tmp_path / "paper" / "circuits").header
    assert {k: header[k] for k in ATTRIBUTION_PRESETS["paper"]} == {
        "method": "EAP-IG-activations", "ig_steps": 5, "baseline": "zero-activations",
        "rule": "left", "metric": "paper_prob_diff"}
    assert header["preset"] == "paper"
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["options"]["method"] == "EAP-IG-activations"
    # a flag may repeat the preset's value, not contradict it
    assert main([*args, "--ig-steps", "5", "--out", str(tmp_path / "same")]) == 0
    assert main([*args, "--method", "EAP", "--out", str(tmp_path / "other")]) == 2
    assert "--preset paper sets --method EAP-IG-activations" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_analyze_writes_summary_tests_and_plots(tiny_run, tmp_path) -> None:
    _, out = tiny_run
    groups = tmp_path / "groups.csv"
    groups.write_text("sample_id,group\n" + "".join(
        f"{i},{'easy' if k < 3 else 'hard'}\n" for k, i in enumerate(IDS)))
    assert main(["circuits", "analyze", str(out), "--groups", str(groups), "--top-n", "15",
                 "--n-resamples", "99"]) == 0
    analysis = out / "analysis"
    summary = json.loads((analysis / "summary.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"{name} in summary.json"))
    assert set(summary["groups"]) == {"easy", "hard"}
    assert summary["groups"]["easy"]["n_circuits"] == 3
    assert summary["selection"] == {"method": "topn", "n": 15, "threshold": None}
    comparison = summary["comparisons"]["easy_vs_hard"]
    stats = {row["statistic"]: row for row in comparison["statistics"]}
    assert 0 <= stats["mean_depth"]["permutation_p"] <= 1
    assert 0 <= stats["n_edges"]["mannwhitney_p"] <= 1
    assert comparison["edges"]["n_edges_in_any"] > 0
    table = pd.read_parquet(analysis / "circuit_statistics.parquet")
    assert len(table) == 5 and (table["n_edges"] <= 15).all()
    assert sorted(summary["plots"]) == ["depth.png", "edge_frequency.png",
                                        "layer_histogram.png"]
    assert all((analysis / name).stat().st_size > 0 for name in summary["plots"])
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,group\n{IDS[0]},easy\n")
    assert main(["circuits", "analyze", str(out), "--groups", str(bad)]) == 2


def test_export_sample_and_set(tiny_run, tmp_path) -> None:
    _, out = tiny_run
    store = CircuitStore.open(out / "circuits")
    assert main(["circuits", "export", str(out), "--samples", IDS[1], "--out",
                 str(tmp_path / "one.pt"), "--top-n", "10"]) == 0
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert torch.equal(one["edges_scores"], store.scores([IDS[1]])[0])
    assert int(one["edges_in_graph"].sum()) <= 10
    assert main(["circuits", "export", str(out / "circuits"), "--all-mean", "--format", "json",
                 "--out", str(tmp_path / "all.json"), "--top-n", "0.1"]) == 0
    data = json.loads((tmp_path / "all.json").read_text())
    assert len(data["edges"]) == store.layout.n_edges
    mean = store.scores(store.sample_ids).mean(dim=0)
    w, r = store.layout.forward_names.index("input"), store.layout.backward_names.index("logits")
    assert data["edges"]["input->logits"]["score"] == pytest.approx(float(mean[w, r]), rel=1e-5)
    assert main(["circuits", "export", str(out), "--samples", "nope", "--out",
                 str(tmp_path / "x.pt")]) == 2


@pytest.mark.slow
def test_two_processes_store_the_same_circuits(tiny_run, tmp_path) -> None:
    model_dir, out = tiny_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "unlearnscope",
         *run_args(model_dir, tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    names = [p.name for p in shard_files(tmp_path / "two" / "circuits")]
    assert {name[:len("scores-rank000")] for name in names} == {"scores-rank000",
                                                                "scores-rank001"}
    two = CircuitStore.open(tmp_path / "two" / "circuits")
    assert sorted(two.sample_ids) == sorted(IDS)
    assert float16_close(two.scores(IDS), CircuitStore.open(out / "circuits").scores(IDS))


def test_groups_files_in_every_accepted_form(tmp_path) -> None:
    expected = {"easy": ["a", "b"], "hard": ["c"]}
    (tmp_path / "g.csv").write_text("sample_id,group\na,easy\nb,easy\nc,hard\n")
    (tmp_path / "by_id.json").write_text(json.dumps({"a": "easy", "b": "easy", "c": "hard"}))
    (tmp_path / "by_group.json").write_text(json.dumps(expected))
    for name in ("g.csv", "by_id.json", "by_group.json"):
        assert read_groups(tmp_path / name) == expected
    (tmp_path / "empty.csv").write_text("sample_id,group\na,easy\n,hard\n")
    with pytest.raises(DataError, match="line 3, field 'sample_id'"):
        read_groups(tmp_path / "empty.csv")
    (tmp_path / "bad.json").write_text(json.dumps({"a": {"group": "easy"}}))
    with pytest.raises(DataError, match="field 'a'"):
        read_groups(tmp_path / "bad.json")


def test_compute_circuits_api_resumes_and_checks_settings(tiny_lm, tmp_path) -> None:
    model, tokenizer = tiny_lm
    samples = load_samples(DATA)[:3]
    store = compute_circuits(model, tokenizer, samples[:2], tmp_path, method="EAP",
                             model_name="tiny", header_extra={"data": "first"})
    assert sorted(store.sample_ids) == sorted(s.id for s in samples[:2])
    assert store.header["ig_steps"] is None and store.header["data"] == "first"
    first = store.scores([samples[0].id])
    # resume: only the new sample is computed; extra header fields are not compared
    store = compute_circuits(model, tokenizer, samples, tmp_path, method="EAP",
                             model_name="tiny", resume=True, header_extra={"data": "second"})
    assert sorted(store.sample_ids) == sorted(s.id for s in samples)
    assert torch.equal(store.scores([samples[0].id]), first)
    with pytest.raises(DataError, match="method"):
        compute_circuits(model, tokenizer, samples, tmp_path, method="EAP-IG-inputs",
                         model_name="tiny", resume=True)
