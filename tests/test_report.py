"""The HTML report: sections, embedded plots, no network loads, escaping, partial runs, and
table numbers equal to the input files."""

from __future__ import annotations

from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from unlearnscope.circuits.analysis import circuit_statistics
from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_names, edge_vector
from unlearnscope.circuits.store import CircuitStore, ShardWriter, write_header, write_index
from unlearnscope.cli import main
from unlearnscope.data.sample import Sample
from unlearnscope.evaluation.cross_method import write_cross_method
from unlearnscope.evaluation.cud_choice import write_cud_choice
from unlearnscope.evaluation.validation import (
    reliability_summary,
    reliability_table,
    seed_mean_outcomes,
)
from unlearnscope.layout import read_seed_outcomes
from unlearnscope.report import build_report, load_run, measured_difficulty
from unlearnscope.report.html import section_list
from unlearnscope.report.markup import number
from unlearnscope.report.rundata import write_samples
from unlearnscope.runs import write_json, write_parquet
from unlearnscope.unlearning.outcomes import outcome_table

EVIL = "<script>alert(1)</script>"
EVIL_QUESTION = "Who wrote <script>alert(1)</script> and <img src=x onerror=alert(2)>?"
SAMPLE_IDS = [f"s{i}" for i in range(11)] + [EVIL]
SCORERS = ("loss", "mrd", "cud")
METHODS = ("graddiff", "npo")
SEEDS = {"npo": (0, 1)}
HEADINGS = [heading for _, heading, _ in section_list(0.05)]
LAYOUT = GraphLayout(n_layers=3, n_heads=2)


class TableParser(HTMLParser):
    """Collects every `<table>` as a list of rows of cell texts (entities unescaped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(page: str) -> list[list[list[str]]]:
    parser = TableParser()
    parser.feed(page)
    return parser.tables


def table_with_header(page: str, header: list[str]) -> list[dict[str, str]]:
    """The rows (as dicts) of the one table whose first row is `header`."""
    found = [t for t in tables_of(page) if t and t[0] == header]
    assert len(found) == 1, f"expected one table headed {header}, found {len(found)}"
    return [dict(zip(header, row, strict=True)) for row in found[0][1:]]


def table_starting_with(page: str, prefix: list[str]) -> list[dict[str, str]]:
    """The rows (as dicts) of the one table whose header starts with `prefix`."""
    found = [t for t in tables_of(page) if t and t[0][: len(prefix)] == prefix]
    assert len(found) == 1, f"expected one table headed {prefix}..., found {len(found)}"
    return [dict(zip(found[0][0], row, strict=True)) for row in found[0][1:]]


def _write_store(directory: Path, sample_ids: list[str]) -> None:
    """A tiny circuit store: odd samples' strongest edges chain layer to layer, even samples'
    go from the input to layer 0 and from layer 0 to the logits."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn((len(sample_ids), LAYOUT.n_forward, LAYOUT.n_backward),
                         generator=generator)
    writer_layer, reader_layer = LAYOUT.forward_layer[:, None], LAYOUT.backward_layer[None, :]
    short = (((writer_layer < 0) & (reader_layer == 0))
             | ((writer_layer == 0) & (reader_layer == LAYOUT.n_layers)))
    chain = reader_layer == writer_layer + 1
    odd = torch.tensor([i % 2 == 1 for i in range(len(sample_ids))])[:, None, None]
    boost = torch.where(odd, chain, short) * scores.sign() * 3
    write_header(directory, {"n_layers": LAYOUT.n_layers, "n_heads": LAYOUT.n_heads,
                             "method": "EAP-IG-inputs"})
    writer = ShardWriter(directory, LAYOUT, shard_size=5)
    writer.add(sample_ids, (scores + boost) * LAYOUT.real_edge_mask)
    writer.close()
    write_index(directory)


def _full_run(root: Path) -> Path:
    rng = np.random.default_rng(0)
    n = len(SAMPLE_IDS)
    write_json(root / "config.json", {"command": "demo", "options": {"note": "<b>bold</b>"}})
    write_json(root / "summary.json", {"n_forget": n, "timings_s": {"scores": 1.5}})
    efficacy_rank = rng.permutation(n)
    rows = []
    for scorer in SCORERS:
        value = efficacy_rank + rng.normal(0, 2, n)
        rows += [{"sample_id": s, "scorer": scorer, "value": v,
                  "difficulty": -v if scorer == "mrd" else v}
                 for s, v in zip(SAMPLE_IDS, value, strict=True)]
    write_parquet(root / "scores.parquet", pd.DataFrame(rows))
    write_samples(root, [Sample(s, EVIL_QUESTION if s == EVIL else f"Question {s}?", "answer")
                         for s in SAMPLE_IDS])
    for method in METHODS:
        before = rng.uniform(0.1, 0.5, n)
        after = before + np.sort(rng.uniform(0.0, 3.0, n))[::-1][efficacy_rank]
        folder = root / "unlearn" / method
        # npo ran two seeds (unlearn/npo/seed<s>/), graddiff one
        for seed in SEEDS.get(method, (None,)):
            where = folder if seed is None else folder / f"seed{seed}"
            moved = after + (0 if seed in (None, 0) else rng.normal(0, 0.5, n))
            write_parquet(where / "outcomes.parquet", outcome_table(SAMPLE_IDS, before, moved))
            write_json(where / "summary.json", {
                "method": method, "steps": 20, "n_forget": n,
                "forget": {"loss_before": float(before.mean()),
                           "loss_after": float(moved.mean()),
                           "prob_before": 0.7, "prob_after": 0.2}})
        write_json(folder / "metrics.json", {
            "forget_quality": None, "model_utility": 0.4321 if method == "npo" else 0.5,
            "forget_truth_ratio": 0.61, "privleak": -12.5, "mia_min_k": 0.55,
            "missing": {"forget_quality": "needs the retain model's truth ratios"}})
    validation = root / "validation"
    validation.mkdir()
    pd.DataFrame([{"scorer": s, "method": m, "spearman": 0.5 - 0.1 * i, "spearman_low": 0.1234,
                   "spearman_high": 0.81234, "kendall": 0.3, "auroc": 0.7, "n": 6,
                   "ceiling": 0.875 if m == "npo" else np.nan,
                   "fraction_of_ceiling": (0.5 - 0.1 * i) / 0.875 if m == "npo" else np.nan}
                  for i, s in enumerate(SCORERS) for m in (*METHODS, "mean")]
                 ).to_csv(validation / "correlations.csv", index=False)
    run = load_run(root)
    reliability_table(run.scores, {name: method.measured() for name, method in
                                   run.methods.items()},
                      exclude_ids=[f"s{i}" for i in range(5)] + [EVIL], n_boot=100
                      ).to_csv(validation / "reliability.csv", index=False)
    matrix = pd.DataFrame(np.eye(3) * 0.5 + 0.5, index=SCORERS, columns=SCORERS)
    matrix.loc["loss", "mrd"] = matrix.loc["mrd", "loss"] = -0.25
    matrix.to_csv(validation / "scorer_correlations.csv", index_label="scorer")
    pd.DataFrame({"scorer_a": ["cud:npo"], "scorer_b": ["cud:graddiff"], "spearman": [0.875],
                  "n": [6]}).to_csv(validation / "cud_stability.csv", index=False)
    sets = [{"scorer": "random", "method": m, "set": "random", "k": 3, "efficacy": 40.0,
             "delta_vs_random": 0.0} for m in METHODS]
    sets += [{"scorer": s, "method": m, "set": part, "k": 3, "efficacy": 40.0 + delta,
              "delta_vs_random": delta}
             for i, s in enumerate(SCORERS) for j, m in enumerate(METHODS)
             for part, delta in (("easy", 3.5 - i - j), ("hard", -7.25 + i + 2 * j))]
    sets = pd.DataFrame(sets)
    mean = sets.groupby(["scorer", "set", "k"], sort=False)[["efficacy", "delta_vs_random"]]
    mean = mean.mean().reset_index().assign(method="mean")
    pd.concat([sets, mean[sets.columns]]).to_csv(validation / "sets.csv", index=False)
    pd.DataFrame([{"method": m, "schedule": sch, "scorer": scorer, "efficacy": 40 + j,
                   "forget_quality": 0.0123, "model_utility": 0.45, "steps_to_target": 12 + j}
                  for m in METHODS for j, (sch, scorer) in enumerate(
                      [("uniform", "-"), ("weighted", "mrd"), ("easy-to-hard", "cud")])]
                 ).to_csv(validation / "schedules.csv", index=False)
    write_json(root / "anchors" / "anchors.json", {
        "method": "vote", "k": 2, "easy": ["s0", "s2", "s4"], "hard": ["s1", "s3", EVIL],
        "fit_ids": ["s0", "s1", "s2", "s3", "s4", EVIL],
        "held_out_ids": [f"s{i}" for i in range(5, 11)]})
    _write_store(root / "circuits", SAMPLE_IDS)
    write_cross_method(root, top_n=0.25, n_boot=100)
    write_cud_choice(root, top_n=(0.25,), n_boot=100)
    _write_beyond_tables(validation)
    return root


def _write_beyond_tables(validation: Path) -> None:
    """Small tables of the sections beyond the correlations, in their writers' columns."""
    pd.DataFrame([{"scorer": s, "method": m, "control": "answer_length",
                   "partial_spearman": 0.25, "partial_spearman_low": 0.05,
                   "partial_spearman_high": 0.5, "n": 6}
                  for s in SCORERS for m in (*METHODS, "mean")]
                 ).to_csv(validation / "partial.csv", index=False)
    pd.DataFrame([{"method": m, "scorer": s, "kind": "predictor" if s.startswith("predicted")
                   else "scorer", "spearman": rho, "spearman_low": rho - 0.3,
                   "spearman_high": rho + 0.1, "n": 6,
                   "model": "ridge(alpha=1.0)" if s.startswith("predicted") else "",
                   "fit_spearman": 0.5}
                  for m in (*METHODS, "mean")
                  for s, rho in ((f"predicted:{m}", 0.6), *zip(SCORERS, (0.5, 0.4, 0.3),
                                                               strict=True))]
                 ).to_csv(validation / "prediction.csv", index=False)
    pd.DataFrame([{"method": m, "best_control": "", "best_control_spearman": "",
                   "best_scorer": "loss", "best_scorer_spearman": "0.500 [0.200, 0.600]",
                   "fit_best_scorer": "loss", "fit_best_scorer_spearman": "0.500 [0.200, 0.600]",
                   "predictor_spearman": "0.600 [0.300, 0.700]", "n": 6}
                  for m in (*METHODS, "mean")]
                 ).to_csv(validation / "prediction_summary.csv", index=False)
    pd.DataFrame([{"method": m, "feature": s, "importance_mean": 0.1 * (i + 1),
                   "importance_std": 0.01, "n": 6}
                  for m in (*METHODS, "mean") for i, s in enumerate(SCORERS)]
                 ).to_csv(validation / "prediction_importance.csv", index=False)
    pd.DataFrame([{"fit_method": a, "eval_method": b, "spearman": 0.5, "spearman_low": 0.2,
                   "spearman_high": 0.7, "n": 6} for a in METHODS for b in METHODS]
                 ).to_csv(validation / "prediction_cross_method.csv", index=False)
    pd.DataFrame([{"method": m, "family": "ridge", "params": "ridge(alpha=1.0)",
                   "cv_spearman": 0.5, "chosen": True} for m in (*METHODS, "mean")]
                 ).to_csv(validation / "prediction_selection.csv", index=False)
    pd.DataFrame([{"method": "npo", "arm": arm, "steps": 20, "forget_slots": 80,
                   "distinct_samples_drawn": 12, "update_params": 100.0,
                   "update_fraction": 0.1, "n_hard": 3, "efficacy_hard": 30.0 + i,
                   "efficacy_all": 40.0, "p_hard_vs_random": np.nan if arm == "random" else 0.5,
                   "retain_loss_change": 0.01, "model_utility": np.nan}
                  for i, arm in enumerate(("global", "hard-anchors", "batch", "random"))]
                 ).to_csv(validation / "circuit_guided.csv", index=False)
    pd.DataFrame([{"band": band, "reader_layers": layers, "n_edges": 10, "circuit_edges": 3,
                   "spearman": 0.3, "spearman_low": 0.1, "spearman_high": 0.5, "n": 6}
                  for band, layers in (("all", "0-2+logits"), ("first", "0"), ("middle", "1"),
                                       ("last", "2+logits"))]
                 ).to_csv(validation / "depth_ablation.csv", index=False)
    pd.DataFrame([{"claim": "hard circuits are later", "statistic": "last_third_fraction",
                   "value_easy": 0.2, "value_hard": 0.3, "effect": 0.4,
                   "effect_kind": "rank-biserial", "p_value": 0.01,
                   "test": "Mann-Whitney U, two-sided", "n_easy": 3, "n_hard": 3,
                   "holds": True}]).to_csv(validation / "claims.csv", index=False)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, str]:
    root = _full_run(tmp_path_factory.mktemp("run"))
    path = build_report(root, top_n=0.25)
    return root, path.read_text(encoding="utf-8")


def test_every_section_rendered_with_embedded_plots(full_run):
    root, page = full_run
    assert (root / "report.html").is_file()
    for heading in HEADINGS:
        assert f"<h2>{escape(heading)}</h2>" in page
    # histograms, scatters, 3 circuit plots, heatmap, schedule bars, efficacy histograms,
    # cross-method heatmap, scorers against the noise ceiling
    assert page.count('src="data:image/png;base64,') == 10
    assert "not computed in this run" not in page
    assert 'class="problem"' not in page
    assert "3 easy, 3 hard (vote, k=2), found on 6 samples, 6 held out" in page


def test_no_network_resources_and_data_escaped(full_run):
    _, page = full_run
    assert "http://" not in page and "https://" not in page
    assert page.count("<script") == 1 and "<link" not in page  # the sort script only
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_scatter_uses_the_samples_held_out_from_anchor_discovery(full_run):
    _, page = full_run
    assert "averaged over methods; 6 samples, those used to discover anchors left out" in page


def test_table_numbers_match_the_input_files(full_run):
    root, page = full_run
    correlations = pd.read_csv(root / "validation" / "correlations.csv")
    header = list(correlations.columns)
    rows = {(r["scorer"], r["method"]): r for r in table_with_header(page, header)}
    assert len(rows) == len(correlations)
    for record in correlations.to_dict(orient="records"):
        row = rows[(record["scorer"], record["method"])]
        for column in ("spearman", "spearman_low", "spearman_high", "kendall", "auroc"):
            assert float(row[column]) == pytest.approx(record[column], rel=1e-3)
        assert int(row["n"]) == record["n"]

    sets = pd.read_csv(root / "validation" / "sets.csv")
    rows = table_with_header(page, list(sets.columns))
    assert len(rows) == len(sets)
    got = {(r["scorer"], r["method"], r["set"]): float(r["delta_vs_random"]) for r in rows}
    want = {(r.scorer, r.method, r.set): r.delta_vs_random for r in sets.itertuples()}
    assert got == want
    summary = table_with_header(page, ["scorer", "easy delta_vs_random",
                                       "hard delta_vs_random", "easy efficacy", "hard efficacy"])
    # the file's `mean` rows: easy 3.5 - i - 0.5, hard -7.25 + i + 1 for scorer i
    assert {r["scorer"]: (float(r["easy delta_vs_random"]), float(r["hard delta_vs_random"]))
            for r in summary} == {"loss": (3.0, -6.25), "mrd": (2.0, -5.25), "cud": (1.0, -4.25)}
    assert "Random sets&#x27; efficacy: 40." in page
    assert "cud: -4.25 / +1.00; loss: -6.25 / +3.00; mrd: -5.25 / +2.00" in page

    schedules = pd.read_csv(root / "validation" / "schedules.csv")
    rows = table_with_header(page, list(schedules.columns))
    assert [(r["method"], r["schedule"], int(r["steps_to_target"])) for r in rows] == sorted(
        (r.method, r.schedule, r.steps_to_target) for r in schedules.itertuples())

    stability = table_with_header(page, ["scorer_a", "scorer_b", "spearman", "n"])
    assert stability == [{"scorer_a": "cud:npo", "scorer_b": "cud:graddiff",
                          "spearman": "0.875", "n": "6"}]
    matrix = table_with_header(page, ["", *SCORERS])
    assert {r[""]: float(r["mrd"]) for r in matrix} == {"loss": -0.25, "mrd": 1.0, "cud": 0.5}

    scores = pd.read_parquet(root / "scores.parquet")
    stats_rows = table_with_header(page, ["scorer", "count", "mean", "std", "min", "median",
                                          "max"])
    for row in stats_rows:
        values = scores.loc[scores["scorer"] == row["scorer"], "value"]
        assert int(row["count"]) == len(values)
        assert row["mean"] == number(float(values.mean()))
        assert row["median"] == number(float(values.median()))


def test_method_summary_and_tofu_metrics(full_run):
    root, page = full_run
    summary_rows = {r["method"]: r for r in table_starting_with(page, ["method", "steps"])}
    for method in METHODS:
        outcomes = seed_mean_outcomes(read_seed_outcomes(root / "unlearn" / method))
        assert summary_rows[method]["mean efficacy"] == number(float(outcomes["efficacy"].mean()))
        assert int(summary_rows[method]["n samples"]) == len(outcomes)
    metrics = {r["method"]: r for r in table_with_header(
        page, ["method", "forget_quality", "model_utility", "forget_truth_ratio", "forget_prob",
               "forget_rouge", "extraction_strength", "exact_memorization", "privleak",
               "mia_min_k"])}
    assert metrics["npo"]["model_utility"] == "0.4321"
    assert metrics["npo"]["forget_quality"] == "–"
    assert float(metrics["graddiff"]["privleak"]) == -12.5
    assert "needs the retain model&#x27;s truth ratios" in page


def test_circuit_signatures_test_the_anchor_sets(full_run):
    root, page = full_run
    store = CircuitStore.open(root / "circuits")
    n = round(0.25 * LAYOUT.n_edges)
    easy, hard = ["s0", "s2", "s4"], ["s1", "s3", EVIL]
    tables = {name: circuit_statistics(store.circuits(ids, "topn", n=n), LAYOUT)
              for name, ids in (("easy", easy), ("hard", hard))}
    # independent of the report's path: scipy on the statistics of the anchors' circuits
    expected = stats.mannwhitneyu(tables["easy"]["last_third_fraction"].dropna(),
                                  tables["hard"]["last_third_fraction"].dropna(),
                                  alternative="two-sided").pvalue
    assert 0 < expected < 1
    assert f"Mann-Whitney p = {number(float(expected))}" in page
    assert f"3 easy and 3 hard circuits, each the top {n} of {LAYOUT.n_edges} edges" in page
    rows = {r["statistic"]: r for r in table_with_header(
        page, ["statistic", "n_easy", "n_hard", "mean_easy", "mean_hard", "median_easy",
               "median_hard", "mannwhitney_u", "mannwhitney_p", "rank_biserial",
               "permutation_p"])}
    edges = table_with_header(page, ["edge", "count_easy", "count_hard", "frequency_easy",
                                     "frequency_hard", "difference", "p_value", "q_value"])
    names = edge_names(LAYOUT)
    counts = {name: dict(zip(names, edge_vector(store.circuits(ids, "topn", n=n), LAYOUT)
                             .sum(dim=0).tolist(), strict=True))
              for name, ids in (("easy", easy), ("hard", hard))}
    assert edges
    for row in edges:
        assert int(row["count_easy"]) == counts["easy"][row["edge"]]
        assert int(row["count_hard"]) == counts["hard"][row["edge"]]
    differences = [abs(float(r["difference"])) for r in edges]
    assert differences == sorted(differences, reverse=True)
    assert float(rows["n_edges"]["mean_easy"]) == pytest.approx(tables["easy"]["n_edges"].mean(),
                                                             rel=1e-3)


def test_measured_difficulty_is_the_mean_rank_of_minus_efficacy(tmp_path):
    for method, efficacy in (("a", [0.9, 0.5, 0.1, 0.5]), ("b", [0.2, 0.8, 0.4, 0.6])):
        write_parquet(tmp_path / "unlearn" / method / "outcomes.parquet",
                      pd.DataFrame({"sample_id": ["w", "x", "y", "z"], "efficacy": efficacy}))
    measured = measured_difficulty(load_run(tmp_path).methods)
    # ranks of -efficacy, ties averaged: a -> w1 x2.5 y4 z2.5; b -> w4 x1 y3 z2
    assert measured.to_dict() == {"w": 2.5, "x": 1.75, "y": 3.5, "z": 2.25}


def test_partial_run_with_scores_only(tmp_path):
    full = _full_run(tmp_path / "full")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "scores.parquet").write_bytes((full / "scores.parquet").read_bytes())
    assert main(["report", str(partial)]) == 0
    page = (partial / "report.html").read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f"<h2>{escape(heading)}</h2>" in page
    for command in ("unlearnscope validate --run", "unlearnscope validate sets --run",
                    "unlearnscope validate schedules --run", "unlearnscope circuits --model",
                    "unlearnscope unlearn --model", "unlearnscope validate cross-method --run",
                    "unlearnscope validate cud-choice --run", "unlearnscope predict --run",
                    "unlearnscope demo --out"):
        assert f"<code>{command}" in page
    # one per section lacking its files (two in the controls and the depth/claims sections),
    # and the per-sample table's questions and efficacy
    assert page.count("not computed in this run") == 18
    # histograms and the scorer correlations computed from the scores
    assert page.count('src="data:image/png;base64,') == 2
    assert "scorer_correlations.csv is absent" in page


def test_empty_folder_and_unusable_files(tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text(encoding="utf-8").count("<h2>") == len(HEADINGS)
    validation = tmp_path / "validation"
    validation.mkdir()
    (validation / "correlations.csv").write_text("scorer,method\nloss,npo\n")
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "unlearn" / "mean").mkdir(parents=True)
    write_json(tmp_path / "anchors" / "anchors.json", {"easy": ["a"], "hard": ["b"]})
    page = build_report(tmp_path).read_text(encoding="utf-8")
    assert "correlations.csv, field &#x27;spearman&#x27;: missing column" in page
    assert "config.json, line 1: malformed JSON" in page
    assert "unlearn/mean: the method name &#x27;mean&#x27; is reserved" in page
    assert "anchors.json, field &#x27;method&#x27;: missing key" in page
    assert main(["report", str(tmp_path / "absent")]) == 2


def test_circuits_without_anchors_compare_measured_quartiles(tmp_path):
    root = _full_run(tmp_path)
    (root / "anchors" / "anchors.json").unlink()
    write_parquet(root / "scores.parquet", pd.read_parquet(root / "scores.parquet").iloc[:0])
    page = build_report(root, top_n=0.25).read_text(encoding="utf-8")
    measured = measured_difficulty(load_run(root).methods).sort_values(kind="stable")
    easiest, hardest = list(measured.index[:3]), list(measured.index[-3:])
    assert "easiest and hardest quartile of measured difficulty" in page
    assert "3 easy and 3 hard circuits" in page
    groups = dict(row for t in tables_of(page) for row in t if len(row) == 2)
    assert groups["easy samples"] == ", ".join(easiest)
    assert groups["hard samples"] == ", ".join(hardest)
    assert "scores.parquet: no rows" in page


def test_circuits_emptied_by_pruning_are_flagged(tmp_path):
    root = _full_run(tmp_path)
    page = build_report(root, top_n=1).read_text(encoding="utf-8")
    store = CircuitStore.open(root / "circuits")
    empty = {name: int((store.circuits(ids, "topn", n=1).sum(dim=(1, 2)) == 0).sum())
             for name, ids in (("easy", ["s0", "s2", "s4"]), ("hard", ["s1", "s3", EVIL]))}
    assert empty["easy"] + empty["hard"] > 0
    listed = ", ".join(f"{count} of 3 {name}" for name, count in empty.items() if count)
    assert f"may help): {listed}." in page
    build_report(root, top_n=0.25)
    assert "Circuits left empty by pruning" not in (root / "report.html").read_text("utf-8")


def test_reliability_section_shows_every_methods_ceiling(full_run):
    root, page = full_run
    table = pd.read_csv(root / "validation" / "reliability.csv")
    summary = reliability_summary(table)
    rows = {r["method"]: r for r in table_starting_with(page, ["method", "seeds", "n",
                                                                "seed rho"])}
    assert set(rows) == set(METHODS)
    npo = summary.set_index("method").loc["npo"]
    assert rows["npo"]["ceiling [95% CI]"] == npo["ceiling [95% CI]"] != "unknown"
    assert rows["npo"]["rho/ceiling [95% CI]"] == npo["rho/ceiling [95% CI]"]
    assert rows["graddiff"]["ceiling [95% CI]"] == "unknown"
    assert "graddiff: one seed (0): seed-to-seed agreement and the noise ceiling are unknown." \
        in page
    pairs = table_starting_with(page, ["method", "seeds", "n", "spearman"])
    assert [(r["method"], r["seeds"]) for r in pairs] == [("npo", "0-1")]
    ceiling = table[(table.method == "npo") & (table.kind == "ceiling")].ceiling.iloc[0]
    per_seed = read_seed_outcomes(root / "unlearn" / "npo")
    held_out = [f"s{i}" for i in range(5, 11)]
    a, b = (per_seed[s].set_index("sample_id").loc[held_out, "efficacy"] for s in (0, 1))
    rho = stats.spearmanr(a, b).statistic
    assert ceiling == pytest.approx(np.sqrt(2 * rho / (1 + rho)))


def test_ceiling_shown_next_to_the_correlations(full_run):
    _, page = full_run
    assert "noise ceiling 0.875" in page or "noise ceiling unknown" in page
    assert "ceiling: the noise ceiling of the method&#x27;s seed mean" in page
    assert "Known for npo" in page
    rows = table_starting_with(page, ["scorer", "method", "spearman", "spearman_low"])
    assert {r["ceiling"] for r in rows if r["method"] == "npo"} == {"0.875"}
    assert {r["ceiling"] for r in rows if r["method"] != "npo"} == {"–"}


def test_seeded_method_reads_its_seed_mean(full_run):
    root, _ = full_run
    run = load_run(root).methods["npo"]
    assert sorted(run.seeds) == [0, 1] and run.summary["steps"] == 20
    mean = (run.seeds[0]["efficacy"] + run.seeds[1]["efficacy"]) / 2
    assert run.outcomes["efficacy"].tolist() == pytest.approx(mean.tolist())


def test_unverified_holdout_is_flagged(tmp_path):
    root = _full_run(tmp_path / "run")
    path = root / "validation" / "correlations.csv"
    pd.read_csv(path).assign(unverified_holdout="cud").to_csv(path, index=False)
    page = build_report(root).read_text(encoding="utf-8")
    assert "Unverified holdout: the anchor-fit samples of cud are unknown" in page
