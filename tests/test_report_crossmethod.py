"""Report sections of the cross-method table and the configuration chosen on the fit half."""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd
import torch

from cud_runs import LAYOUT, outcome, write_run
from unlearnscope.evaluation.cross_method import write_cross_method
from unlearnscope.evaluation.cud_choice import criterion_check, write_cud_choice
from unlearnscope.report import load_run
from unlearnscope.report.crossmethod import cross_method, cud_choice
from unlearnscope.report.html import render_report

EVIL = "<b>&x"


def _run(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(19)] + [EVIL]
    scores = torch.tensor(rng.normal(size=(20, LAYOUT.n_edges)), dtype=torch.float32)
    outcomes = {"npo": {0: outcome(ids, rng.uniform(size=20)),
                        1: outcome(ids, rng.uniform(size=20))},
                EVIL: {0: outcome(ids, rng.uniform(size=20))}}
    return write_run(tmp_path / "run", scores, ids, outcomes, per_seed={"npo"},
                     fit=ids[:10], held=ids[10:], k=2)


def test_sections_show_the_heatmap_the_choice_and_its_samples_escaped(tmp_path):
    root = _run(tmp_path)
    write_cross_method(root, top_n=20, n_boot=100)
    table = write_cud_choice(root, top_n=(16, 24), n_boot=100)
    data = load_run(root)
    html = cross_method(data)
    assert html.count('src="data:image/png;base64,') == 1
    assert "<h3>Leave one method out</h3>" in html
    assert "row(s) different seeds" in html and "row(s) same run" in html
    assert EVIL not in html and "&lt;b&gt;&amp;x" in html
    html = cud_choice(data)
    chosen = table.loc[table["chosen"], "candidate"].item()
    assert f"<td>{escape(chosen)}</td>" in html
    assert f"{len(table)}: {len(table)} from the circuit store" in html
    assert "the fit half only: 10 samples, by 3-fold cross-fitting" in html
    row = table.loc[table["chosen"]].iloc[0]
    assert f"cross-fitted Spearman {row['fit_cv_spearman']:.4g} (in-sample, for comparison: " \
        f"{row['fit_in_sample_spearman']:.4g})" in html
    check = criterion_check(table)
    assert f"Spearman(cross-fitted fit score, held-out Spearman) = " \
        f"{check['cv_vs_held_out']:.3f}" in html
    assert "the held-out half: 10 samples, read only after the choice" in html
    assert "s00, s01" in html and "&lt;b&gt;&amp;x" in html
    assert EVIL not in html
    page = render_report(data)
    assert "<h2>10. CUD across unlearning methods</h2>" in page
    assert "<h2>11. CUD configuration chosen on the fit half</h2>" in page


def test_absent_and_malformed_tables(tmp_path):
    root = _run(tmp_path)
    data = load_run(root)
    assert f"unlearnscope validate cross-method --run {root}" in cross_method(data)
    assert f"unlearnscope validate cud-choice --run {root}" in cud_choice(data)
    folder = root / "validation"
    folder.mkdir()
    pd.DataFrame({"kind": ["pair"]}).to_csv(folder / "cross_method.csv", index=False)
    html = cross_method(data)
    assert 'class="problem"' in html and "missing column &#x27;anchors&#x27;" in html
    write_cud_choice(root, top_n=(16,), n_boot=50)
    frame = pd.read_csv(folder / "cud_choice.csv")
    frame.assign(chosen=True).to_csv(folder / "cud_choice.csv", index=False)
    assert f"{len(frame)} rows marked chosen (expected one)" in cud_choice(data)
