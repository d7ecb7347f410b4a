"""Re-run a method's seed 0 of the committed study on a re-fine-tuned target (another CPU) and
compare its per-sample outcomes with the committed seed 0 and with seed-to-seed agreement.

    python rerun.py STUDY_DIR RUN_DIR OUT_DIR RUN_CONFIG TOFU_DIR METHOD

RUN_DIR holds the re-fine-tuned `target/`; writes OUT_DIR/outcomes.parquet and comparison.json.
"""
import json
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from unlearnscope.models import load_model
from unlearnscope.pipeline import load_demo_config
from unlearnscope.unlearning.trainer import run_unlearning

study, run, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
METHOD = sys.argv[6]
SEEDS = sorted(int(p.name[4:]) for p in (study / "unlearn" / METHOD).glob('seed*'))
PAIRS = [(a, b) for i, a in enumerate(SEEDS) for b in SEEDS[i + 1:]]
config = load_demo_config(sys.argv[4], tofu_dir=sys.argv[5])
forget, retain, _ = config.samples()
if not (out / "outcomes.parquet").is_file():
    model, tokenizer = load_model(str(run / "target"), dtype="float32")
    run_unlearning(model, tokenizer, forget, retain, METHOD, out_dir=out, save=False,
                   **config.unlearn_settings(METHOD, 0))
new = pd.read_parquet(out / "outcomes.parquet").set_index("sample_id")
committed = {s: pd.read_parquet(study / f"unlearn/{METHOD}/seed{s}/outcomes.parquet")
             .set_index("sample_id") for s in SEEDS}
ids = committed[0].index
result = {
    "rerun_vs_committed_seed0_spearman": spearmanr(new.loc[ids].efficacy, committed[0].efficacy)[0],
    "rerun_vs_committed_seed0_max_abs_efficacy_diff":
        float((new.loc[ids].efficacy - committed[0].efficacy).abs().max()),
    "prob_before_max_abs_diff": float((new.loc[ids].prob_before - committed[0].prob_before).abs().max()),
    "prob_before_spearman": spearmanr(new.loc[ids].prob_before, committed[0].prob_before)[0],
    "mean_efficacy_rerun": float(new.efficacy.mean()),
    "mean_efficacy_committed_seed0": float(committed[0].efficacy.mean()),
    "committed_seed_to_seed_spearman": {f"{a}-{b}": spearmanr(committed[a].efficacy, committed[b].loc[ids].efficacy)[0]
                                        for a, b in PAIRS},
}
print(json.dumps(result, indent=2))
(out / "comparison.json").write_text(json.dumps(result, indent=2))
