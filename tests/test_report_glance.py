"""The report's at-a-glance views: the correlation heatmap's cells and ceilings, the opening
sentences against hand-computed values, the per-sample table, and subplot titles that stay
within their own subplot."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg

from test_report import tables_of
from unlearnscope.evaluation.validation import seed_mean_outcomes
from unlearnscope.report import leads
from unlearnscope.report.glance import cell_colour, correlation_grid, sample_frame, sample_table
from unlearnscope.report.plots import difficulty_scatter_figure, score_histogram_figure
from unlearnscope.report.rundata import MethodRun, RunData

NAN = float("nan")


def _correlations() -> pd.DataFrame:
    rows = [("loss", "npo", 0.47, 0.30, 0.61, 0.48), ("loss", "simnpo", 0.10, -0.2, 0.4, NAN),
            ("mrd", "npo", -0.05, -0.4, 0.3, -0.06), ("mrd", "simnpo", 0.20, -0.1, 0.5, NAN),
            ("loss", "mean", 0.30, 0.1, 0.5, NAN), ("mrd", "mean", 0.35, -0.05, 0.6, NAN)]
    return pd.DataFrame(rows, columns=["scorer", "method", "spearman", "spearman_low",
                                       "spearman_high", "fraction_of_ceiling"]).assign(n=40)


def _reliability() -> pd.DataFrame:
    return pd.DataFrame({"method": ["npo", "simnpo"], "ground_truth": "efficacy",
                         "kind": "ceiling", "n_seeds": [3, 1], "ceiling": [0.98, NAN],
                         "ceiling_low": [0.9, NAN], "ceiling_high": [0.995, NAN]})


def test_heatmap_cells_hold_value_interval_and_ceiling(tmp_path):
    data = RunData(tmp_path, correlations=_correlations(), reliability=_reliability())
    html = correlation_grid(data)
    [grid] = tables_of(html)
    # methods in file order, mean last; scorers by decreasing Spearman in the mean column
    assert grid[0] == ["scorer", "npoceiling 0.98 [0.90, 0.99]", "simnpoceiling unknown (1 seed)",
                       "meanmethod average"]
    assert grid[1] == ["mrd", "-0.05[-0.40, 0.30]-0.06 of ceiling", "0.20[-0.10, 0.50]",
                       "0.35[-0.05, 0.60]"]
    assert grid[2] == ["loss", "0.47[0.30, 0.61]0.48 of ceiling", "0.10[-0.20, 0.40]",
                       "0.30[0.10, 0.50]"]
    assert html.count("font-weight:bold") == 2  # loss on npo and on the mean exclude 0
    assert f"background:{cell_colour(0.47)};font-weight:bold" in html


def test_cell_colour_is_white_at_zero_and_saturates_at_one():
    assert cell_colour(0.0) == "#ffffff"
    assert cell_colour(1.0) == "#d6604d" == cell_colour(3.0)
    assert cell_colour(-1.0) == "#4393c3"
    assert cell_colour(0.5) == "#{:02x}{:02x}{:02x}".format(*(round((255 + c) / 2)
                                                           for c in (214, 96, 77)))
    assert cell_colour(NAN) == "#f4f4f4"


def test_opening_sentences_are_computed_from_the_tables():
    assert leads.versus_measured(_correlations(), held_out=True) == (
        "On the 40 samples held out from anchor discovery, the best scorer for npo is loss at "
        "0.47 [0.30, 0.61], 0.48 of the noise ceiling (1 of 2 scorers' intervals exclude 0); "
        "the best scorer for simnpo is mrd at 0.20 [-0.10, 0.50] (no scorer's interval "
        "excludes 0 for simnpo); the best scorer for the method average is mrd at 0.35 "
        "[-0.05, 0.60] (1 of 2 scorers' intervals exclude 0).")
    ceilings = {row["method"]: row for _, row in _reliability().iterrows()}
    assert leads.reliability(ceilings) == ("Noise ceiling of the measured difficulty: npo 0.98 "
                                           "[0.90, 0.99] over 3 seeds; unknown for simnpo "
                                           "(one seed).")
    summary = pd.DataFrame({"easy delta_vs_random": [2.0, -1.0, 0.5],
                            "hard delta_vs_random": [-1.0, -3.0, 1.0]},
                           index=["loss", "mrd", "cud"])
    assert leads.sets(summary) == (
        "Over methods, 1 of 3 scorers pick easy sets that unlearn more than random sets and "
        "hard sets that unlearn less; the widest gap is loss's (easy +2.00, hard -1.00 "
        "efficacy against random).")
    matrix = pd.DataFrame([[1, 0.9, -0.2], [0.9, 1, 0.1], [-0.2, 0.1, 1]],
                          index=["a", "b", "c"], columns=["a", "b", "c"])
    assert leads.scorer_correlations(matrix) == (
        "Of 3 scorer pairs, 1 have |rho| >= 0.8; the closest are a and b (0.90), the most "
        "opposed a and c (-0.20).")
    assert leads.methods({"npo": 0.3, "graddiff": 0.5}, {"npo": 3, "graddiff": 1}) == (
        "Mean forget efficacy, highest first: graddiff 0.500, npo 0.300 (mean of 3 seeds).")


def test_sample_table_joins_scores_seed_means_and_questions(tmp_path):
    scores = pd.DataFrame({"sample_id": ["a", "b", "a", "b"], "scorer": ["loss", "loss", "mrd",
                                                                          "mrd"],
                           "value": [1.0, 2.0, 3.0, 4.0], "difficulty": [1.0, 2.0, -3.0, -4.0]})
    seeds = {0: pd.DataFrame({"sample_id": ["a", "b", "c"], "efficacy": [0.2, 0.4, 0.6]}),
             1: pd.DataFrame({"sample_id": ["a", "b", "c"], "efficacy": [0.4, 0.8, 1.0]})}
    methods = {"npo": MethodRun("npo", outcomes=seed_mean_outcomes(seeds), seeds=seeds)}
    samples = pd.DataFrame({"sample_id": ["b", "a"], "question": ["<b>why</b>", "how?"]})
    frame = sample_frame(RunData(tmp_path, scores=scores, methods=methods, samples=samples))
    assert frame.columns.tolist() == ["sample_id", "question", "loss", "mrd", "efficacy: npo"]
    assert frame["sample_id"].tolist() == ["a", "b", "c"]
    assert frame["question"].tolist()[:2] == ["how?", "<b>why</b>"]
    assert frame["efficacy: npo"].tolist() == [0.30000000000000004, 0.6000000000000001, 0.8]
    assert frame["mrd"].tolist()[:2] == [-3.0, -4.0] and np.isnan(frame["mrd"].iloc[2])
    html = sample_table(frame)
    assert "&lt;b&gt;why&lt;/b&gt;" in html and "<b>" not in html
    assert '<td data-value="">–</td>' in html and '<td data-value="-3.0">-3</td>' in html


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_long_scorer_names_stay_within_their_subplot():
    rng = np.random.default_rng(0)
    names = [f"extraction_strength_with_a_very_long_option_suffix_{i}" for i in range(4)]
    pairs = {n: pd.DataFrame({"difficulty": rng.normal(size=5),
                              "measured_difficulty": rng.normal(size=5)}) for n in names}
    titles = {n: f"{n}: Spearman 0.12 [-0.50, 0.70], ceiling 0.84" for n in names}
    scores = pd.DataFrame({"sample_id": np.tile(np.arange(5), 4), "scorer": np.repeat(names, 5),
                           "value": rng.normal(size=20), "difficulty": 0.0})
    for fig in (difficulty_scatter_figure(pairs, titles), score_histogram_figure(scores)):
        FigureCanvasAgg(fig)
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        boxes = [[t.get_window_extent(renderer) for t in (ax.title, ax.xaxis.label)]
                 for ax in axes]
        for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
            assert not any(_overlaps(x, y) for x in a for y in b), (i, j)
