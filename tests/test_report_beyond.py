"""Report sections 12-15 (controls and partial correlations, the learned predictor,
circuit-guided unlearning, edge depth and the CUD paper's claims): each opening sentence
states the scorer, method and number that the hand-built tables imply, data strings are
escaped, and absent or unusable files give the 'not computed' or problem message."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd

from test_report import table_with_header
from unlearnscope.evaluation.circuit_guided import CIRCUIT_GUIDED_COLUMNS
from unlearnscope.report import beyond, load_run
from unlearnscope.report.html import render_report, section_list
from unlearnscope.report.signatures import CLAIM_COLUMNS

EVIL = "<b>x</b>"
CONTROL_TABLE = ["method", "scorer", "kind", "Spearman [95% CI]", "n", "minus best control",
                 "interval above best control",
                 "partial Spearman given answer_length [95% CI]"]


def lead(html: str) -> str:
    """The section's opening sentence as text."""
    found = re.findall(r'<p class="lead">(.*?)</p>', html, flags=re.S)
    assert len(found) == 1, found
    return unescape(found[0])


def paragraphs(html: str) -> list[str]:
    return [unescape(p) for p in re.findall(r'<p class="[a-z]+">(.*?)</p>', html, flags=re.S)]


def _correlation(scorer: str, method: str, rho: float, low: float, high: float) -> dict:
    return {"scorer": scorer, "method": method, "spearman": rho, "spearman_low": low,
            "spearman_high": high, "kendall": 0.0, "auroc": 0.5, "n": 40}


def _validation(root: Path) -> Path:
    folder = root / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# npo: the best control is answer_length (0.60, above question_length's 0.40); mrd's and
# EVIL's intervals lie above 0.60, loss's does not though its rho is higher than EVIL's.
# mean: the best control is sequence_length (0.55); no real scorer's interval clears it.
CORRELATIONS = [
    _correlation("answer_length", "npo", 0.60, 0.45, 0.72),
    _correlation("question_length", "npo", 0.40, 0.20, 0.55),
    _correlation("mrd", "npo", 0.80, 0.65, 0.88),
    _correlation("loss", "npo", 0.75, 0.58, 0.85),
    _correlation(EVIL, "npo", 0.70, 0.62, 0.78),
    _correlation("answer_length", "mean", 0.50, 0.30, 0.65),
    _correlation("sequence_length", "mean", 0.55, 0.35, 0.70),
    _correlation("mrd", "mean", 0.65, 0.50, 0.75),
    _correlation("loss", "mean", 0.58, 0.54, 0.62),
]
PARTIAL = [
    {"scorer": s, "method": m, "control": "answer_length", "partial_spearman": rho,
     "partial_spearman_low": low, "partial_spearman_high": high, "n": 40}
    for s, m, rho, low, high in (
        ("mrd", "npo", 0.40, 0.10, 0.60), ("loss", "npo", 0.20, -0.05, 0.40),
        (EVIL, "npo", 0.10, -0.20, 0.35), ("question_length", "npo", 0.50, 0.30, 0.65),
        ("mrd", "mean", 0.30, 0.05, 0.50), ("loss", "mean", 0.35, 0.12, 0.52))]


def _controls_run(root: Path, partial: bool = True) -> Path:
    folder = _validation(root)
    pd.DataFrame(CORRELATIONS).to_csv(folder / "correlations.csv", index=False)
    if partial:
        pd.DataFrame(PARTIAL).to_csv(folder / "partial.csv", index=False)
    return root


def test_controls_name_the_scorers_whose_interval_clears_the_best_control(tmp_path):
    html = beyond.controls(load_run(_controls_run(tmp_path)))
    text = lead(html)
    npo, mean = text.split("; for the method average ")
    assert npo == ("On the 40 samples validated, for npo the best trivial control is "
                   "answer_length at 0.60 [0.45, 0.72] and 2 of 3 real scorers' intervals lie "
                   f"above it: mrd by +0.20 (0.80 [0.65, 0.88]), {EVIL} by +0.10 "
                   "(0.70 [0.62, 0.78])")
    assert "loss" not in npo and "question_length" not in npo
    assert mean == ("the best trivial control is sequence_length at 0.55 [0.35, 0.70] and no "
                    "real scorer's interval lies above it (closest: mrd, +0.10 at "
                    "0.65 [0.50, 0.75]).")
    assert EVIL not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    rows = {(r["method"], r["scorer"]): r for r in table_with_header(html, CONTROL_TABLE)}
    assert len(rows) == len(CORRELATIONS)
    for record in CORRELATIONS:
        row = rows[(record["method"], record["scorer"])]
        best = {"npo": 0.60, "mean": 0.55}[record["method"]]
        if "length" in record["scorer"]:
            assert row["interval above best control"] == "–"
            assert row["minus best control"] == "–"
        else:
            assert row["interval above best control"] == (
                "yes" if record["spearman_low"] > best else "no")
            assert float(row["minus best control"]) == round(record["spearman"] - best, 3)
    assert rows[("npo", "answer_length")]["kind"] == "control (best)"
    assert rows[("npo", "question_length")]["kind"] == "control"
    assert rows[("mean", "sequence_length")]["kind"] == "control (best)"
    assert rows[("mean", "answer_length")]["kind"] == "control"
    assert rows[("npo", "mrd")]["kind"] == "scorer"
    # rows of a method by Spearman, highest first; the partial column joined on both keys
    assert [k[1] for k in rows if k[0] == "npo"] == ["mrd", "loss", EVIL, "answer_length",
                                                     "question_length"]
    assert rows[("npo", "mrd")]["partial Spearman given answer_length [95% CI]"] == \
        "0.400 [0.100, 0.600]"
    assert rows[("npo", "answer_length")]["partial Spearman given answer_length [95% CI]"] \
        == "–"


def test_partial_sentence_counts_real_scorers_above_zero(tmp_path):
    html = beyond.controls(load_run(_controls_run(tmp_path)))
    # question_length (a control) has the highest partial for npo but is not counted
    assert ("Controlled for answer_length (partial Spearman), for npo 1 of 3 real scorers' "
            "intervals lie above 0, the highest mrd's at 0.40 [0.10, 0.60]; for the method "
            "average 2 of 2 real scorers' intervals lie above 0, the highest loss's at "
            "0.35 [0.12, 0.52].") in paragraphs(html)


def test_controls_held_out_wording_and_without_partial(tmp_path):
    root = _controls_run(tmp_path, partial=False)
    (root / "anchors").mkdir()
    (root / "anchors" / "anchors.json").write_text(
        '{"method": "vote", "k": 1, "easy": ["a"], "hard": ["b"], "fit_ids": ["a", "b"], '
        '"held_out_ids": ["c"]}')
    html = beyond.controls(load_run(root))
    assert lead(html).startswith("On the 40 held-out samples, for npo")
    assert "partial correlations controlled for answer length: not computed in this run" in html
    assert f"<code>unlearnscope demo --out {root}</code>" in html


def test_partial_alone_leads_the_section(tmp_path):
    folder = _validation(tmp_path)
    pd.DataFrame(PARTIAL).to_csv(folder / "partial.csv", index=False)
    html = beyond.controls(load_run(tmp_path))
    assert lead(html).startswith("Controlled for answer_length (partial Spearman), for npo 1 "
                                 "of 3 real scorers'")
    assert f"<code>unlearnscope validate --run {tmp_path}</code>" in html


PREDICTION = [
    # npo: the control answer_length is higher than every scorer but is not a single scorer
    ("npo", "predicted:npo", "predictor", 0.77, 0.67, 0.84, "ridge(alpha=1.0)"),
    ("npo", "mrd", "scorer", 0.75, 0.65, 0.82, ""),
    ("npo", "loss", "scorer", 0.70, 0.60, 0.80, ""),
    ("npo", "answer_length", "control", 0.85, 0.80, 0.90, ""),
    ("mean", "predicted:mean", "predictor", 0.60, 0.50, 0.70, "gbm(n_estimators=25)"),
    ("mean", EVIL, "scorer", 0.72, 0.61, 0.81, ""),
]


def _prediction_run(root: Path) -> Path:
    folder = _validation(root)
    pd.DataFrame([{"method": m, "scorer": s, "kind": k, "spearman": r, "spearman_low": lo,
                   "spearman_high": hi, "n": 30, "model": model, "fit_spearman": 0.5}
                  for m, s, k, r, lo, hi, model in PREDICTION]
                 ).to_csv(folder / "prediction.csv", index=False)
    nan = np.nan
    base = {"ground_truth": "efficacy", "n_seeds": 3, "n": 30, "reliability": nan,
            "spearman_low": nan, "spearman_high": nan, "ceiling_low": nan,
            "ceiling_high": nan, "fraction_low": nan, "fraction_high": nan, "distinct": 30,
            "tied": 0, "note": ""}
    pd.DataFrame([
        {**base, "method": "npo", "kind": "ceiling", "item": "seed mean of 3",
         "spearman": 0.8, "ceiling": 0.9625, "fraction_of_ceiling": nan},
        # the predictor's fraction with its interval; mrd has no row: rho / ceiling
        {**base, "method": "npo", "kind": "scorer", "item": "predicted:npo", "spearman": 0.77,
         "ceiling": 0.9625, "fraction_of_ceiling": 0.80, "fraction_low": 0.71,
         "fraction_high": 0.87},
    ]).to_csv(folder / "reliability.csv", index=False)
    pd.DataFrame([{"method": "npo", "feature": "mrd", "importance_mean": 0.30,
                   "importance_std": 0.05, "n": 30},
                  {"method": "npo", "feature": "loss", "importance_mean": 0.10,
                   "importance_std": 0.02, "n": 30},
                  {"method": "mean", "feature": EVIL, "importance_mean": 0.25,
                   "importance_std": 0.04, "n": 30},
                  {"method": "mean", "feature": "mrd", "importance_mean": 0.05,
                   "importance_std": 0.01, "n": 30}]
                 ).to_csv(folder / "prediction_importance.csv", index=False)
    pd.DataFrame([{"fit_method": a, "eval_method": b, "spearman": r, "spearman_low": r - 0.1,
                   "spearman_high": r + 0.1, "n": 30}
                  for a, b, r in (("npo", "npo", 0.77), ("npo", "mean", 0.62),
                                  ("mean", "npo", 0.70), ("mean", "mean", 0.60))]
                 ).to_csv(folder / "prediction_cross_method.csv", index=False)
    pd.DataFrame([{"method": m, "family": "ridge", "params": "ridge(alpha=1.0)",
                   "cv_spearman": 0.5, "chosen": True} for m in ("npo", "mean")]
                 ).to_csv(folder / "prediction_selection.csv", index=False)
    pd.DataFrame([{"method": "npo", "best_control": "answer_length",
                   "best_control_spearman": "0.850 [0.800, 0.900]", "best_scorer": "mrd",
                   "best_scorer_spearman": "0.750 [0.650, 0.820]", "fit_best_scorer": "loss",
                   "fit_best_scorer_spearman": "0.700 [0.600, 0.800]",
                   "predictor_spearman": "0.770 [0.670, 0.840]", "n": 30}]
                 ).to_csv(folder / "prediction_summary.csv", index=False)
    return root


def test_predictor_against_the_best_single_scorer_as_fractions_of_the_ceiling(tmp_path):
    html = beyond.prediction(load_run(_prediction_run(tmp_path)))
    assert lead(html) == (
        "On the 30 samples validated, the learned predictor's Spearman (and fraction of the "
        "noise ceiling) is for npo 0.77 [0.67, 0.84] (0.80 [0.71, 0.87] of the ceiling) "
        "against 0.75 [0.65, 0.82] (0.78 of the ceiling) for the best single scorer mrd, a "
        "difference of +0.02; for the method average 0.60 [0.50, 0.70] (ceiling unknown) "
        f"against 0.72 [0.61, 0.81] (ceiling unknown) for the best single scorer {EVIL}, a "
        "difference of -0.12.")
    assert EVIL not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    rows = {r["method"]: r for r in table_with_header(html, [
        "method", "model", "n", "predictor [95% CI]", "predictor / ceiling",
        "best single scorer", "its Spearman [95% CI]", "its / ceiling", "predictor - best",
        "best control", "best control's Spearman", "scorer picked on the fit half",
        "fit-half pick's Spearman"])}
    assert rows["npo"]["its / ceiling"] == f"{0.75 / 0.9625:.3f}"
    assert rows["npo"]["predictor / ceiling"] == "0.800 [0.710, 0.870]"
    assert rows["npo"]["scorer picked on the fit half"] == "loss"
    assert rows["mean"]["best control"] == "–"  # not in the summary file
    assert ("the most important feature: npo mrd (0.300 ± 0.050); the method average "
            f"{EVIL} (0.250 ± 0.040).") in " ".join(paragraphs(html))
    importance = table_with_header(html, ["feature", "npo", "the method average"])
    # by the mean importance over methods: mrd (0.175), EVIL (0.25 alone), loss (0.10)
    assert [r["feature"] for r in importance] == [EVIL, "mrd", "loss"]
    assert importance[1] == {"feature": "mrd", "npo": "0.300 ± 0.050",
                             "the method average": "0.050 ± 0.010"}
    assert ("Fit on one method's outcomes and evaluated on another's, the held-out Spearman "
            "ranges from 0.62 [0.52, 0.72] (npo to mean) to 0.70 [0.60, 0.80] (mean to "
            "npo).") in paragraphs(html)
    cross = table_with_header(html, ["fit on \\ evaluated on", "npo", "mean"])
    assert cross[1] == {"fit on \\ evaluated on": "mean", "npo": "0.700 [0.600, 0.800]",
                        "mean": "0.600 [0.500, 0.700]"}


def test_predictor_without_held_out_outcomes(tmp_path):
    root = _prediction_run(tmp_path)
    folder = root / "validation"
    for name in ("prediction", "prediction_importance", "prediction_cross_method",
                 "prediction_summary"):
        frame = pd.read_csv(folder / f"{name}.csv")
        frame.iloc[:0].to_csv(folder / f"{name}.csv", index=False)
    html = beyond.prediction(load_run(root))
    assert lead(html) == ("The predictor was fit for 2 target(s) (npo ridge(alpha=1.0), the "
                          "method average ridge(alpha=1.0)), but no outcome outside its fit "
                          "half is known: predictions only, no held-out Spearman.")
    assert paragraphs(html).count("None: no held-out outcome to measure them on.") == 1
    assert paragraphs(html).count("None: no held-out outcome to evaluate on.") == 1
    assert 'class="problem"' not in html


def _arms(method: str, values: dict[str, tuple[float, float]], *, steps: int = 20,
          utility: float = np.nan) -> list[dict]:
    """Rows of `CIRCUIT_GUIDED_COLUMNS`; `values`: arm -> (efficacy_hard, p vs random)."""
    return [dict(zip(CIRCUIT_GUIDED_COLUMNS, (
        method, arm, steps, 80, 12, 1e3, 0.1, 4, eff, 50.0, p,
        0.01 * (i + 1), utility), strict=True))
        for i, (arm, (eff, p)) in enumerate(values.items())]


def test_circuit_guided_names_arms_beating_the_random_mask_and_global(tmp_path):
    rows = _arms("npo", {"random": (30.0, np.nan), "batch": (28.0, 0.5),
                         "hard-anchors": (35.0, 0.02), "global": (40.0, 0.01)}, utility=0.41)
    rows += _arms(EVIL, {"global": (44.0, 0.3), "hard-anchors": (50.0, 0.2),
                         "batch": (45.0, 0.01), "random": (30.0, np.nan)})
    pd.DataFrame(rows).to_csv(_validation(tmp_path) / "circuit_guided.csv", index=False)
    html = beyond.circuit_guided(load_run(tmp_path))
    assert lead(html) == (
        "Forget efficacy (x100) per arm at the same step budget, npo, on its 4 hardest "
        "held-out samples: global 40.0 (p = 0.01 against random), hard-anchors 35.0 "
        "(p = 0.02 against random), batch 28.0 (p = 0.5 against random), random 30.0; "
        "hard-anchors beats the random mask at p < 0.05, none exceeds global; "
        f"{EVIL}, on its 4 hardest held-out samples: global 44.0 (p = 0.3 against random), "
        "hard-anchors 50.0 (p = 0.2 against random), batch 45.0 (p = 0.01 against random), "
        "random 30.0; batch beats the random mask at p < 0.05, hard-anchors, batch exceed "
        "global.")
    costs = [p for p in paragraphs(html) if p.startswith("Retain loss change")]
    # npo's rows were written random, batch, hard-anchors, global: retain change 0.01 ... 0.04
    assert costs == ["Retain loss change (after - before) / model utility: npo: global "
                     "+0.040 / 0.410, hard-anchors +0.030 / 0.410, batch +0.020 / 0.410, "
                     f"random +0.010 / 0.410; {EVIL}: global +0.010 / –, hard-anchors "
                     "+0.020 / –, batch +0.030 / –, random +0.040 / –."]
    table = table_with_header(html, CIRCUIT_GUIDED_COLUMNS)
    assert [(r["method"], r["arm"]) for r in table][:4] == [
        ("npo", "global"), ("npo", "hard-anchors"), ("npo", "batch"), ("npo", "random")]
    assert EVIL not in html and 'class="problem"' not in html


def test_circuit_guided_flags_unequal_budgets(tmp_path):
    rows = _arms("npo", {"global": (40.0, 0.01), "random": (30.0, np.nan)})
    rows[1]["steps"] = 10
    pd.DataFrame(rows).to_csv(_validation(tmp_path) / "circuit_guided.csv", index=False)
    html = beyond.circuit_guided(load_run(tmp_path))
    assert ("npo: the arms ran different budgets (steps 20, 10; forget slots 80, 80), so they "
            "do not compare.") in paragraphs(html)


DEPTH = [("all", "0-11+logits", 0.30, 0.10, 0.50), ("first", "0-3", 0.20, 0.00, 0.40),
         ("middle", "4-7", 0.35, 0.15, 0.52), ("last", "8-11+logits", 0.55, 0.40, 0.70)]


def _claim(statistic: str, effect: float, p: float, holds: bool, claim: str = "a claim"
           ) -> dict:
    return dict(zip(CLAIM_COLUMNS, (claim, statistic, 1.0, 2.0, effect, "rank-biserial", p,
                                    "Mann-Whitney U, two-sided", 20, 20, holds), strict=True))


def _depth_run(root: Path, depth: bool = True, claims: bool = True) -> Path:
    folder = _validation(root)
    if depth:
        pd.DataFrame([{"band": b, "reader_layers": layers, "n_edges": 100, "circuit_edges": 5,
                       "spearman": r, "spearman_low": lo, "spearman_high": hi, "n": 50}
                      for b, layers, r, lo, hi in DEPTH]
                     ).to_csv(folder / "depth_ablation.csv", index=False)
    if claims:
        pd.DataFrame([_claim("last_third_fraction", 0.4, 0.01, True, claim=EVIL),
                      _claim("max_depth", 0.1, 0.4, False),
                      _claim("n_nodes", -0.3, 0.001, False)]
                     ).to_csv(folder / "claims.csv", index=False)
    return root


def test_depth_thirds_against_all_edges_and_which_claims_hold(tmp_path):
    html = beyond.depth_and_claims(load_run(_depth_run(tmp_path)))
    assert lead(html) == (
        "CUD's held-out Spearman with measured difficulty by the layer of the edges' reader: "
        "first third (layers 0-3) 0.20 [0.00, 0.40], middle third (layers 4-7) "
        "0.35 [0.15, 0.52], last third (layers 8-11+logits) 0.55 [0.40, 0.70], against "
        "0.30 [0.10, 0.50] over all edges (last third's interval lies above it); 1 of 3 of "
        "the CUD paper's circuit claims hold (last_third_fraction), and n_nodes differs the "
        "other way at p < 0.05.")
    claims = table_with_header(html, ["claim", "statistic", "easy", "hard", "effect",
                                      "effect kind", "p", "test", "n easy", "n hard", "holds"])
    assert [(r["statistic"], r["effect"], r["p"], r["holds"]) for r in claims] == [
        ("last_third_fraction", "0.4", "0.01", "yes"), ("max_depth", "0.1", "0.4", "no"),
        ("n_nodes", "-0.3", "0.001", "no")]
    assert claims[0]["claim"] == EVIL and EVIL not in html
    depth = table_with_header(html, ["band", "reader layers", "edges in band", "circuit edges",
                                     "Spearman [95% CI]", "n"])
    assert [r["Spearman [95% CI]"] for r in depth] == [
        "0.300 [0.100, 0.500]", "0.200 [0.000, 0.400]", "0.350 [0.150, 0.520]",
        "0.550 [0.400, 0.700]"]


def test_depth_without_claims_and_claims_without_depth(tmp_path):
    html = beyond.depth_and_claims(load_run(_depth_run(tmp_path / "a", claims=False)))
    assert lead(html).endswith("over all edges (last third's interval lies above it).")
    assert "the CUD paper&#x27;s circuit claims: not computed in this run" in html
    html = beyond.depth_and_claims(load_run(_depth_run(tmp_path / "b", depth=False)))
    assert lead(html).startswith("1 of 3 of the CUD paper's circuit claims hold")
    assert "edge-depth ablation of CUD: not computed in this run" in html


def test_absent_files_give_the_command_that_makes_them(tmp_path):
    data = load_run(tmp_path)
    expected = {
        beyond.controls: ["held-out correlations with measured difficulty: not computed",
                          f"<code>unlearnscope validate --run {tmp_path}</code>",
                          "partial correlations controlled for answer length: not computed",
                          f"<code>unlearnscope demo --out {tmp_path}</code>"],
        beyond.prediction: ["learned difficulty predictor: not computed",
                            f"<code>unlearnscope predict --run {tmp_path}</code>"],
        beyond.circuit_guided: ["circuit-guided unlearning: not computed",
                                f"<code>unlearnscope demo --out {tmp_path}</code>"],
        beyond.depth_and_claims: ["edge-depth ablation of CUD: not computed",
                                  "circuit claims: not computed",
                                  f"<code>unlearnscope demo --out {tmp_path}</code>"],
    }
    for render, texts in expected.items():
        html = render(data)
        assert 'class="lead"' not in html
        for text in texts:
            assert text in html, (render.__name__, text)


def test_unusable_files_are_named_with_their_field(tmp_path):
    folder = _validation(tmp_path)
    pd.DataFrame([_claim("n_nodes", 0.1, 0.5, False)]).drop(columns="holds").to_csv(
        folder / "claims.csv", index=False)
    pd.DataFrame(_arms("npo", {"global": (1.0, 0.5)})).drop(columns="p_hard_vs_random").to_csv(
        folder / "circuit_guided.csv", index=False)
    (folder / "partial.csv").write_text("scorer,method\n")
    (folder / "prediction.csv").write_text("method,scorer\nnpo,mrd\n")
    data = load_run(tmp_path)
    assert "claims.csv, field &#x27;holds&#x27;: missing column" in beyond.depth_and_claims(data)
    assert "circuit_guided.csv, field &#x27;p_hard_vs_random&#x27;: missing column" in \
        beyond.circuit_guided(data)
    assert "partial.csv, field &#x27;control&#x27;: missing column" in beyond.controls(data)
    assert "prediction.csv, field &#x27;kind&#x27;: missing column" in beyond.prediction(data)
    page = render_report(data)
    assert page.count("could not use") >= 4
    assert "Files that could not be used" in page


def test_sections_in_the_page_order(tmp_path):
    _controls_run(tmp_path)
    _prediction_run(tmp_path)
    _depth_run(tmp_path)
    page = render_report(load_run(tmp_path))
    headings = [h for _, h, _ in section_list(0.05)]
    new = ["12. Trivial controls and partial correlations", "13. Learned difficulty predictor",
           "14. Circuit-guided unlearning",
           "15. Edge depth and the CUD paper&#x27;s circuit claims"]
    assert [h.replace("'", "&#x27;") for h in headings[11:15]] == new
    positions = [page.index(f"<h2>{h}</h2>") for h in new]
    assert positions == sorted(positions)
    assert EVIL not in page
