"""The end-to-end run: by default on synthetic authors and the tiny model (the embedded
demo); with `model` and `tofu_dir`, on a subset of TOFU authors and a pretrained model.

Stages, each writing into its own place under the run folder and skipped when its product
already exists (an interrupted demo picks up where it stopped; `run_demo(stop_after=...)`
ends it after one of the `PHASES` on purpose):

1. `target/`, `retain/`: the model fine-tuned on forget + retain (until it has memorized the
   forget answers), and a retain model trained on the retain set only.
2. `scores.parquet`: baselines and MRD on every forget sample.
3. `circuits/`: the per-sample EAP-IG circuit of every forget sample.
4. `unlearn/<method>/`: each unlearning method on the whole forget set: per-sample outcomes
   and summary, under each of the method's seeds (`PipelineConfig.seeds`; several seeds go to
   `unlearn/<method>/seed<s>/`, each run from a fresh copy of the target, each its own
   stage), and once per method TOFU-style metrics of its first seed's model (forget quality
   against the retain model) in `unlearn/<method>/metrics.json`.
   `steps_to_forget/<method>/`: steps-to-forget of every forget sample for the methods in
   `PipelineConfig.steps_to_forget_methods` (a second ground truth).
5. `anchors/anchors.json`: reference easy/hard sets voted from the outcomes (each method's
   seed mean) on half of the forget samples; `scores.parquet` gains `cud` for every sample.
6. `validation/`: every scorer against the measured difficulty on the held-out half, with the
   noise ceilings of `validation/reliability.csv`, the easy/hard set experiment and the
   schedule experiment.
7. `report.html`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from unlearnscope.anchors import read_anchors, vote_anchor_sets, write_anchors
from unlearnscope.anchors.sets import AnchorSets
from unlearnscope.circuits.compute import ATTRIBUTION_PRESETS, compute_circuits
from unlearnscope.data import load_samples
from unlearnscope.data.tofu import evaluation_splits
from unlearnscope.errors import DataError
from unlearnscope.evaluation.circuit_guided import write_circuit_guided
from unlearnscope.evaluation.cross_method import write_cross_method
from unlearnscope.evaluation.cud_choice import write_cud_choice
from unlearnscope.evaluation.depth_ablation import write_depth_ablation
from unlearnscope.evaluation.experiments import (
    DEFAULT_SCHEDULES,
    CachedUnlearning,
    ScheduleMetrics,
    easy_hard_sets,
    method_settings,
    schedule_comparison,
    to_markdown,
    write_table,
)
from unlearnscope.evaluation.holdout import resolve_holdout
from unlearnscope.evaluation.partial import write_partial_correlations
from unlearnscope.evaluation.prediction import write_prediction
from unlearnscope.evaluation.tofu import evaluate_tofu, metrics_report, retain_reference
from unlearnscope.evaluation.validation import (
    correlation_markdown,
    measured_difficulty,
    reliability_summary,
    seed_mean_outcomes,
    write_validation,
)
from unlearnscope.layout import (
    ANCHORS_DIR,
    ANCHORS_FILE,
    CIRCUIT_GUIDED_FILE,
    CIRCUITS_DIR,
    CLAIMS_FILE,
    CONFIG_FILE,
    CROSS_METHOD_FILE,
    CUD_CHOICE_FILE,
    DEPTH_ABLATION_FILE,
    FINETUNE_FILE,
    INDEX_FILE,
    METRICS_FILE,
    OUTCOMES_FILE,
    PAPER_CIRCUITS_DIR,
    PER_SAMPLE_FILE,
    PREDICTION_FILE,
    RELIABILITY_FILE,
    REPORT_FILE,
    RETAIN_DIR,
    SCHEDULES_FILE,
    SCORES_FILE,
    SETS_FILE,
    STEPS_DIR,
    STEPS_FILE,
    SUMMARY_FILE,
    TARGET_DIR,
    UNLEARN_DIR,
    VALIDATION_DIR,
    read_outcomes,
    read_scores,
    read_steps_to_forget,
    seed_folder,
)
from unlearnscope.models import load_model
from unlearnscope.models.finetune import FinetuneConfig, build_tiny, finetune, mean_answer_prob
from unlearnscope.report import build_report
from unlearnscope.report.rundata import write_samples
from unlearnscope.report.signatures import compare_easy_hard, write_claims
from unlearnscope.runs import (
    check_unchanged,
    read_json,
    write_config,
    write_json,
    write_parquet,
)
from unlearnscope.scoring import (
    BASELINES,
    get_scorer,
    read_scorer_configs,
    score_samples,
    scorer_class,
)
from unlearnscope.scoring.base import LogitScorer, option_names
from unlearnscope.scoring.mrd import MonteCarloMRD
from unlearnscope.unlearning.steps_to_forget import StepsToForgetConfig, steps_to_forget
from unlearnscope.unlearning.trainer import run_unlearning

METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "undial", "rmu")
ANCHOR_METHODS = ("grad_diff", "npo", "simnpo", "undial", "rmu")  # the CUD paper's five
SET_SCORERS = ("cud", "mrd", "loss", "grad_norm")
# the trivial controls every score must beat (answer_rarity counts tokens over forget + retain)
CONTROLS = ("answer_length", "question_length", "sequence_length", "author_position",
            "answer_rarity")


@dataclass
class PipelineConfig:
    """The settings of one pipeline run, the embedded demo or a real TOFU study; the defaults (the
    embedded demo) finish in minutes on two CPU cores.

    `model=None` builds the tiny model; a model spec (e.g. `smollm2-135m`) fine-tunes that.
    `tofu_dir` switches the data to TOFU: forget = `forget_split` (its `_perturbed` file, with
    paraphrased and perturbed answers), retain = the first `retain_authors` authors of
    `retain90`, holdout = the matching `holdout` split.
    `seeds`: the unlearning seeds of a method (default: `seed` alone); two or more give its
    seed-to-seed reliability and noise ceiling. `steps_to_forget_methods`: methods whose
    steps-to-forget is measured (each sample unlearned alone, at most
    `steps_to_forget_max_steps` steps, with the method's lr and options).
    """

    model: str | None = None
    tofu_dir: str | None = None
    forget_split: str = "forget01"
    retain_authors: int = 6
    n_authors: int = 20
    questions_per_author: int = 10
    forget_fraction: float = 0.2
    seed: int = 0
    target_prob: float = 0.9
    max_epochs: int = 80
    lr: float = 3e-3
    batch_size: int = 16
    # "bf16-autocast" trains (fine-tuning and unlearning) under bfloat16 autocast with float32
    # weights (unlearnscope.models.precision); scoring and evaluation stay float32
    precision: str = "float32"
    # the scorers of stage 2 (names from the scoring registry; `mrd` takes `mrd_draws` and
    # `seed`), each with its `scorer_options`; scorers added to a finished run are computed
    # alone and merged into `scores.parquet`
    scorers: tuple[str, ...] = (*BASELINES, "mrd", "mrd_grad", "mrd_hutchinson", *CONTROLS)
    scorer_options: dict[str, dict] = field(default_factory=dict)
    mrd_draws: int = 200
    ig_steps: int = 5
    # The left rule's alpha=0 step evaluates RMSNorm at a zero residual stream, where its
    # gradient is ~1/sqrt(eps) per layer: the scores are dominated by that one step and the
    # pruned top-n circuits come out empty on the tiny Llama. The midpoint rule avoids it.
    ig_rule: str = "midpoint"
    # also the circuits in the CUD authors' attribution settings (ATTRIBUTION_PRESETS["paper"],
    # EAP-IG-activations: ~5-11x the cost of ours) and their CUD (`cud_paper`)
    paper_preset: bool = True
    circuit_top_n: float = 0.05
    cud_vector: str = "weighted"
    unlearn: dict = field(default_factory=lambda: {
        "epochs": 3, "lr": 5e-4, "batch_size": 8, "grad_accum": 1, "warmup_epochs": 0.5})
    # Per-method overrides for the tiny model: SimNPO's length-normalized loss and RMU's
    # hidden-state loss move a 4-layer model slowly at the shared learning rate.
    method_settings: dict = field(default_factory=lambda: {
        "simnpo": {"lr": 2e-3},
        "rmu": {"lr": 1e-2,
                "method_options": {"setting": "small-model", "layer": 2,
                                   "steering_coeff": 10.0, "alpha": 10.0}}})
    methods: tuple[str, ...] = METHODS
    seeds: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "npo": (0, 1, 2), "grad_diff": (0, 1, 2)})
    steps_to_forget_methods: tuple[str, ...] = ("npo",)
    steps_to_forget_max_steps: int = 30
    anchor_methods: tuple[str, ...] = ANCHOR_METHODS
    set_methods: tuple[str, ...] = ANCHOR_METHODS
    set_scorers: tuple[str, ...] = SET_SCORERS
    anchor_k: int = 4
    set_k: int = 4
    schedule_methods: tuple[str, ...] = ("npo", "grad_diff")
    schedule_budget: int = 10
    # (schedule, scorer) pairs of the schedule experiment; scorer None for uniform
    schedules: tuple = DEFAULT_SCHEDULES
    # forget quality and model utility of each schedule's model (a generation-based TOFU
    # evaluation per schedule); off, the schedule table keeps its efficacy columns alone
    schedule_tofu_metrics: bool = True
    # each schedule run measures the efficacy of every forget sample after every
    # `schedule_track_every` steps (one forward pass over the forget set each time: on a real
    # model most of the experiment's time); steps-to-target is resolved to that many steps
    schedule_track_every: int = 1
    # the TOFU evaluation of each method's first seed includes the gradient-norm MIA (per-sample
    # gradients over forget and holdout: most of that evaluation's time on a real model)
    tofu_gradnorm: bool = True
    # circuit-guided unlearning (updates restricted to circuit components) at schedule_budget
    circuit_guided_methods: tuple[str, ...] = ("npo",)
    target_efficacy: float = 0.3

    def spec(self, split: str) -> str:
        return (f"synthetic:authors/{split}?n_authors={self.n_authors}"
                f"&questions_per_author={self.questions_per_author}"
                f"&forget_fraction={self.forget_fraction}&seed={self.seed}")

    def samples(self) -> tuple[list, list, list]:
        """(forget, retain, holdout) samples."""
        if self.tofu_dir is None:
            return tuple(load_samples(self.spec(split)) for split in
                         ("forget", "retain", "holdout"))
        splits = evaluation_splits(self.forget_split)
        forget = load_samples(f"tofu:{splits['forget']}", data_dir=self.tofu_dir)
        retain = load_samples("tofu:retain90", data_dir=self.tofu_dir)
        holdout = load_samples(f"tofu:{splits['holdout']}", data_dir=self.tofu_dir)
        return forget, retain[: 20 * self.retain_authors], holdout

    def unlearner(self, target, tokenizer, retain) -> CachedUnlearning:
        """Runs each method from a fresh copy of `target` with `unlearn_settings(method)`."""
        return CachedUnlearning(target, tokenizer, retain, self._run_settings(self.seed),
                         per_method=self.method_settings)

    def unlearn_settings(self, method: str, seed: int | None = None) -> dict:
        """Run settings of `method` (under `seed`, default `self.seed`)."""
        return method_settings(self._run_settings(self.seed if seed is None else seed),
                               self.method_settings, method)

    def _run_settings(self, seed: int) -> dict:
        return {**self.unlearn, "seed": seed, "precision": self.precision}

    def method_seeds(self, method: str) -> tuple[int, ...]:
        """The seeds `method` is unlearned with, in order (the first one's model is evaluated)."""
        seeds = tuple(self.seeds.get(method, (self.seed,)))
        if not seeds or len(set(seeds)) != len(seeds):
            raise DataError(f"method {method}: expected distinct seeds, got {seeds}",
                            field="seeds")
        return seeds

    def outcome_folder(self, out: Path, method: str, seed: int) -> Path:
        """Where one (method, seed) run writes its outcomes: `unlearn/<method>/` for a method
        with one seed, else `unlearn/<method>/seed<s>/`."""
        return seed_folder(out / UNLEARN_DIR / method, seed, self.method_seeds(method))


# PipelineConfig fields that change products a rerun keeps (finished stages are skipped): a rerun
# into the same folder must record the same values. The others (methods, seeds, scorers,
# experiment lists and switches) only add stages, so a finished run can be extended.
PRODUCT_FIELDS = ("model", "tofu_dir", "forget_split", "retain_authors", "n_authors",
                  "questions_per_author", "forget_fraction", "seed", "target_prob",
                  "max_epochs", "lr", "batch_size", "precision", "unlearn", "method_settings",
                  "mrd_draws", "ig_steps", "ig_rule", "circuit_top_n", "cud_vector",
                  "scorer_options", "anchor_k", "set_k")


def check_rerun(out: Path, config: PipelineConfig) -> None:
    """Refuse to run `config` into a folder whose `config.json` records a demo with other
    `PRODUCT_FIELDS`, naming them (`runs.check_unchanged`)."""
    path = out / CONFIG_FILE
    recorded = read_json(path) if path.is_file() else {}
    if recorded.get("command") != "demo":
        return
    check_unchanged(recorded.get("options", {}), asdict(config), keys=PRODUCT_FIELDS,
                    source=str(path),
                    hint="these change what the finished stages computed; rerun with the "
                         "recorded values (adding methods, seeds, scorers or experiments is "
                         "fine) or write to a new --out")


def load_pipeline_config(path: str | Path, **overrides) -> PipelineConfig:
    """A `PipelineConfig` from a JSON object of its fields (the others keep their defaults; lists
    become the tuples the fields hold), then `overrides`. A study commits such a file, so that
    its run is one command."""
    path = Path(path)
    try:
        fields_ = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read the run config: {error}", source=str(path)) from error
    if not isinstance(fields_, dict):
        raise DataError("expected a JSON object of PipelineConfig fields", source=str(path))
    defaults = asdict(PipelineConfig())
    for key, value in fields_.items():
        if key not in defaults:
            raise DataError(f"not a PipelineConfig field (known: {', '.join(defaults)})",
                            source=str(path), field=key)
        if isinstance(defaults[key], tuple):
            if not isinstance(value, list):
                raise DataError(f"expected a list, got {value!r}", source=str(path), field=key)
            fields_[key] = tuple(value)
    return PipelineConfig(**{**fields_, **overrides})


@dataclass
class PipelineRun:
    """What the stages share: the run folder, the samples and the loaded models."""

    out: Path
    config: PipelineConfig
    forget: list = field(default_factory=list)
    retain: list = field(default_factory=list)
    holdout: list = field(default_factory=list)
    target: object = None
    tokenizer: object = None
    timings: dict = field(default_factory=dict)

    def stage(self, name: str, product: Path | tuple[Path, ...] | bool,
              run: Callable[[], None]) -> None:
        """Run a stage unless its product (every one of its products) exists, or `product` is
        True (the caller checked it); record its wall time."""
        started = time.perf_counter()
        if isinstance(product, bool):
            done = product
        else:
            done = all(p.exists() for p in (product if isinstance(product, tuple)
                                            else (product,)))
        if not done:
            print(f"[demo] {name}")
            run()
        self.timings[name] = round(time.perf_counter() - started, 1)


def _train(samples, out: Path, config: PipelineConfig, *, epochs: int | None,
           target_samples=None, vocab_samples=None):
    """Fine-tune the tiny model (built on `vocab_samples`) or `config.model`."""
    if config.model is None:
        model, tokenizer = build_tiny(vocab_samples or samples, seed=config.seed)
    else:
        model, tokenizer = load_model(config.model, dtype="float32")
    finetune_config = FinetuneConfig(
        epochs=epochs or config.max_epochs, lr=config.lr, batch_size=config.batch_size,
        warmup_ratio=0.05, seed=config.seed,
        target_prob=None if epochs else config.target_prob, precision=config.precision,
    )
    return finetune(model, tokenizer, samples, out, finetune_config, resume=True,
                    target_samples=target_samples)


def _epochs_trained(model_dir: Path) -> int:
    return int(read_json(model_dir / FINETUNE_FILE)["epochs_trained"])


def _models(demo: PipelineRun) -> None:
    config, out = demo.config, demo.out
    full = demo.forget + demo.retain
    demo.stage("fine-tune the target model until it has memorized the forget answers",
               out / TARGET_DIR / FINETUNE_FILE,
               lambda: _train(full, out / TARGET_DIR, config, epochs=None,
                              target_samples=demo.forget))
    demo.target, demo.tokenizer = load_model(str(out / TARGET_DIR), dtype="float32")
    epochs = _epochs_trained(out / TARGET_DIR)
    demo.stage(f"fine-tune the retain model ({epochs} epochs, as the target)",
               out / RETAIN_DIR / FINETUNE_FILE,
               lambda: _train(demo.retain, out / RETAIN_DIR, config, epochs=epochs,
                              vocab_samples=full))


def _scores(demo: PipelineRun) -> None:
    """Stage 2, one stage per scorer: a scorer already in `scores.parquet` is kept, a scorer
    added to the config of a finished run is computed alone and merged in."""
    config, table = demo.config, demo.out / SCORES_FILE
    present = set(pd.read_parquet(table, columns=["scorer"]).scorer) if table.is_file() else set()
    scorers = []
    for name in config.scorers:
        # the run's seed and corpus go to the scorers that take them
        kind = scorer_class(name)
        takes = option_names(kind) or ()
        options = {"seed": config.seed} if "seed" in takes else {}
        if "corpus" in takes:
            options["corpus"] = demo.forget + demo.retain
        if issubclass(kind, MonteCarloMRD):
            options["k"] = config.mrd_draws
        scorers.append(get_scorer(name, **{**options, **config.scorer_options.get(name, {})}))
    # the logit scorers share one forward pass, so they are one stage
    shared = [s for s in scorers if isinstance(s, LogitScorer)]
    groups = [shared] * bool(shared) + [[s] for s in scorers if s not in shared]
    for group in groups:
        names = [s.name for s in group]
        missing = [s for s in group if s.name not in present]
        demo.stage(f"score {len(demo.forget)} forget samples: {', '.join(names)}", not missing,
                   lambda missing=missing: score_samples(
                       demo.target, demo.tokenizer, demo.forget, missing, demo.out,
                       batch_size=16, resume=True, merge=True))


def _circuits(demo: PipelineRun) -> None:
    demo.stage(f"per-sample EAP-IG circuits ({demo.config.ig_steps} steps)",
               demo.out / CIRCUITS_DIR / INDEX_FILE,
               lambda: compute_circuits(demo.target, demo.tokenizer, demo.forget,
                                        demo.out / CIRCUITS_DIR, ig_steps=demo.config.ig_steps,
                                        rule=demo.config.ig_rule, batch_size=8, resume=True))
    if demo.config.paper_preset:
        demo.stage("per-sample circuits in the CUD authors' attribution settings",
                   demo.out / PAPER_CIRCUITS_DIR / INDEX_FILE,
                   lambda: compute_circuits(demo.target, demo.tokenizer, demo.forget,
                                            demo.out / PAPER_CIRCUITS_DIR, batch_size=8,
                                            resume=True, **ATTRIBUTION_PRESETS["paper"]))


def _unlearn(demo: PipelineRun) -> None:
    reference = None
    config = demo.config
    for method in config.methods:
        folder = demo.out / UNLEARN_DIR / method
        first, *others = config.method_seeds(method)

        def unlearn(seed: int, method=method):
            model = load_model(str(demo.out / TARGET_DIR), dtype="float32")[0]
            return run_unlearning(model, demo.tokenizer, demo.forget, demo.retain, method,
                                  out_dir=config.outcome_folder(demo.out, method, seed),
                                  save=False, **config.unlearn_settings(method, seed))

        def evaluated(method=method, folder=folder, seed=first):
            nonlocal reference
            if reference is None:
                retain_model, retain_tok = load_model(str(demo.out / RETAIN_DIR), dtype="float32")
                reference = retain_reference(retain_model, retain_tok, forget=demo.forget,
                                             holdout=demo.holdout)
            result = unlearn(seed)
            evaluation = evaluate_tofu(result.model, demo.tokenizer, forget=demo.forget,
                                       holdout=demo.holdout, retain=demo.retain,
                                       retain_truth_ratios=reference.truth_ratios,
                                       retain_mia_auc=reference.mia_auc, max_new_tokens=32,
                                       gradnorm=config.tofu_gradnorm)
            write_json(folder / METRICS_FILE, metrics_report(
                evaluation, benchmark="synthetic" if config.tofu_dir is None else "tofu",
                forget_split=config.forget_split,
                model=f"{demo.out / 'target'} + {method} (seed {seed})",
                retain_reference=str(demo.out / RETAIN_DIR)))
            write_parquet(folder / PER_SAMPLE_FILE, evaluation["per_sample"])

        demo.stage(f"unlearn the forget set with {method}" + (f" (seed {first})" if others
                                                               else ""),
                   (config.outcome_folder(demo.out, method, first) / OUTCOMES_FILE,
                    folder / METRICS_FILE), evaluated)
        for seed in others:
            demo.stage(f"unlearn the forget set with {method} (seed {seed})",
                       config.outcome_folder(demo.out, method, seed) / OUTCOMES_FILE,
                       lambda seed=seed, unlearn=unlearn: unlearn(seed))


def _steps_to_forget(demo: PipelineRun) -> dict[str, pd.DataFrame]:
    """Steps-to-forget of every forget sample per configured method (staged)."""
    found = {}
    for method in demo.config.steps_to_forget_methods:
        folder = demo.out / STEPS_DIR / method
        settings = demo.config.unlearn_settings(method)
        config = StepsToForgetConfig(method=method, lr=settings["lr"],
                                     method_options=settings.get("method_options", {}),
                                     max_steps=demo.config.steps_to_forget_max_steps,
                                     seed=demo.config.seed)
        demo.stage(f"steps to forget with {method} (each sample alone)",
                   folder / STEPS_FILE,
                   lambda config=config, folder=folder: steps_to_forget(
                       load_model(str(demo.out / TARGET_DIR), dtype="float32")[0],
                       demo.tokenizer, demo.forget, retain_samples=demo.retain, config=config,
                       out_dir=folder, resume=True))
        found[method] = read_steps_to_forget(folder)[1]
    return found


def _outcomes(demo: PipelineRun, methods: tuple[str, ...] | None = None
              ) -> dict[str, dict[int, pd.DataFrame]]:
    """`{method: {seed: outcome table}}` of the configured seeds."""
    config = demo.config
    return {m: {s: read_outcomes(config.outcome_folder(demo.out, m, s) / OUTCOMES_FILE)
                for s in config.method_seeds(m)}
            for m in methods or config.methods}


def _anchors_and_cud(demo: PipelineRun) -> AnchorSets:
    folder = demo.out / ANCHORS_DIR
    ids = [s.id for s in demo.forget]

    def anchors() -> None:
        means = {m: seed_mean_outcomes(tables)
                 for m, tables in _outcomes(demo, demo.config.anchor_methods).items()}
        write_anchors(folder, vote_anchor_sets(
            means, demo.config.anchor_k, ids, fit_fraction=0.5, seed=demo.config.seed,
            options={"methods": list(demo.config.anchor_methods), "fit_fraction": 0.5}))

    demo.stage("vote easy/hard anchors on half of the forget set", folder / ANCHORS_FILE,
               anchors)
    sets = read_anchors(folder / ANCHORS_FILE)
    scores = read_scores(demo.out / SCORES_FILE)
    if "cud" not in set(scores.scorer):
        print("[demo] CUD: compare every circuit with the anchors' circuits")
        cud = get_scorer("cud", anchors=str(folder / ANCHORS_FILE), circuits=str(demo.out),
                         anchor_method="combined", top_n=demo.config.circuit_top_n,
                         vector=demo.config.cud_vector)
        score_samples(demo.target, demo.tokenizer, demo.forget, [cud], demo.out,
                      batch_size=16, resume=True, merge=True)
    if demo.config.paper_preset and "cud_paper" not in set(scores.scorer):
        print("[demo] CUD in the CUD authors' configuration (their circuits and settings)")
        cud_paper = get_scorer("cud_paper", anchors=str(folder / ANCHORS_FILE),
                               circuits=str(demo.out / PAPER_CIRCUITS_DIR.parent))
        score_samples(demo.target, demo.tokenizer, demo.forget, [cud_paper], demo.out,
                      batch_size=16, resume=True, merge=True)
    return sets


def _validation(demo: PipelineRun, sets: AnchorSets, steps: dict[str, pd.DataFrame]) -> pd.DataFrame:
    folder = demo.out / VALIDATION_DIR
    demo.stage("learned difficulty predictor (fit on the anchors' half, scores the rest)",
               folder / PREDICTION_FILE,
               lambda: write_prediction(demo.out, seed=demo.config.seed, merge=True))
    scores = read_scores(demo.out / SCORES_FILE)
    # the run's own cud was scored against anchors/anchors.json; a recorded config wins
    known = {"cud": {"name": "cud", "uses_anchors": True, "anchor_fit_ids": sets.fit_ids}}
    holdout = resolve_holdout(scores, {**known, **read_scorer_configs(demo.out)},
                              extra_ids=sets.fit_ids)
    outcomes = _outcomes(demo)
    table = write_validation(demo.out, scores, outcomes, exclude_ids=holdout.exclude_ids,
                             steps_to_forget=steps, seed=demo.config.seed)
    write_partial_correlations(demo.out, scores, outcomes, exclude_ids=holdout.exclude_ids,
                               seed=demo.config.seed)

    def sets_experiment() -> None:
        table = easy_hard_sets(demo.config.unlearner(demo.target, demo.tokenizer, demo.retain),
                               demo.forget, scores, scorers=demo.config.set_scorers,
                               methods=demo.config.set_methods, k=demo.config.set_k,
                               eligible_ids=sets.held_out_ids)
        write_table(table, folder / SETS_FILE)

    if demo.config.set_methods:
        demo.stage(f"easy/hard set experiment (k={demo.config.set_k}, held-out samples)",
                   folder / SETS_FILE, sets_experiment)

    def schedules() -> None:
        evaluate = ScheduleMetrics(
            demo.tokenizer, demo.forget, demo.retain,
            lambda: load_model(str(demo.out / RETAIN_DIR), dtype="float32"), max_new_tokens=32)
        table = schedule_comparison(
            demo.config.unlearner(demo.target, demo.tokenizer, demo.retain), demo.forget,
            scores, methods=demo.config.schedule_methods,
            budget_steps=demo.config.schedule_budget,
            target_efficacy=demo.config.target_efficacy,
            evaluate=evaluate if demo.config.schedule_tofu_metrics else None,
            schedules=demo.config.schedules, track_every=demo.config.schedule_track_every)
        write_table(table, folder / SCHEDULES_FILE)

    if demo.config.schedule_methods:
        demo.stage(f"schedule experiment ({demo.config.schedule_budget} steps)",
                   folder / SCHEDULES_FILE, schedules)
    top_n, seed = demo.config.circuit_top_n, demo.config.seed
    if demo.config.circuit_guided_methods:
        demo.stage("circuit-guided unlearning (circuit-masked vs global vs random control)",
                   folder / CIRCUIT_GUIDED_FILE,
                   lambda: write_circuit_guided(
                       demo.out, demo.config.unlearner(demo.target, demo.tokenizer, demo.retain),
                       demo.forget, methods=demo.config.circuit_guided_methods,
                       budget_steps=demo.config.schedule_budget, top_n=top_n, seed=seed))
    demo.stage("CUD by edge depth (reader in the first / middle / last third)",
               folder / DEPTH_ABLATION_FILE,
               lambda: write_depth_ablation(demo.out, top_n=top_n, vector=demo.config.cud_vector,
                                            seed=seed))
    demo.stage("the CUD paper's circuit claims, easy vs hard", folder / CLAIMS_FILE,
               lambda: write_claims(demo.out, top_n=top_n, seed=seed))
    demo.stage("CUD across methods (anchors from one method, validated on the others)",
               folder / CROSS_METHOD_FILE,
               lambda: write_cross_method(demo.out, top_n=top_n, seed=demo.config.seed,
                                          split_seed=demo.config.seed))
    demo.stage("CUD configuration chosen on the fit half", folder / CUD_CHOICE_FILE,
               lambda: write_cud_choice(demo.out, seed=demo.config.seed,
                                        split_seed=demo.config.seed))
    return table


def _report(demo: PipelineRun, found: dict) -> None:
    demo.stage("report", demo.out / REPORT_FILE,
               lambda: build_report(demo.out, top_n=demo.config.circuit_top_n))


# The run's phases in order, each `(name, run(demo, found))`; `found` carries what a phase
# hands to a later one (steps-to-forget tables, anchor sets, the correlation table).
PHASES: tuple[tuple[str, Callable[[PipelineRun, dict], None]], ...] = (
    ("models", lambda demo, found: _models(demo)),
    ("unlearn", lambda demo, found: _unlearn(demo)),
    ("steps_to_forget", lambda demo, found: found.update(steps=_steps_to_forget(demo))),
    ("scores", lambda demo, found: _scores(demo)),
    ("circuits", lambda demo, found: _circuits(demo)),
    ("anchors", lambda demo, found: found.update(sets=_anchors_and_cud(demo))),
    ("validation", lambda demo, found: found.update(
        table=_validation(demo, found["sets"], found["steps"]))),
    ("report", _report),
)
PHASE_NAMES = tuple(name for name, _ in PHASES)


def run_demo(out_dir: str | Path, config: PipelineConfig | None = None, *,
             stop_after: str | None = None) -> dict | None:
    """Run every stage; returns the summary also written to `summary.json`.

    `stop_after` (one of `PHASE_NAMES`) ends the run after that phase, with its products and
    the earlier ones in the run folder and no summary (returns None); a later call with the
    same folder and config skips what is there and goes on."""
    if stop_after is not None and stop_after not in PHASE_NAMES:
        raise DataError(f"unknown phase '{stop_after}' (known: {', '.join(PHASE_NAMES)})",
                        field="stop_after")
    config = config or PipelineConfig()
    out = Path(out_dir)
    check_rerun(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, "demo", asdict(config))
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    forget, retain, holdout = config.samples()
    demo = PipelineRun(out, config, forget=forget, retain=retain, holdout=holdout)
    write_samples(out, forget)
    found: dict = {}
    for name, phase in PHASES:
        phase(demo, found)
        if name == stop_after:
            print(f"[demo] stopped after '{name}'; run again with the same --out to go on "
                  "(finished stages are skipped)")
            return None
    summary = _summary(demo, found["table"])
    write_json(out / SUMMARY_FILE, {**summary, "wall_s": time.perf_counter() - started})
    _print_summary(demo, summary, found["table"])
    return summary


def _print_circuit_comparison(demo: PipelineRun) -> None:
    """Circuits of the easiest vs the hardest quartile of measured difficulty (all methods)."""
    measured = measured_difficulty(_outcomes(demo))["mean"].sort_values(kind="mergesort")
    quarter = max(2, len(measured) // 4)
    signatures = compare_easy_hard(demo.out / CIRCUITS_DIR, list(measured.index[:quarter]),
                                   list(measured.index[-quarter:]),
                                   top_n=demo.config.circuit_top_n, n_resamples=2000,
                                   seed=demo.config.seed)
    columns = ["statistic", "mean_easy", "mean_hard", "mannwhitney_p", "permutation_p"]
    print(f"[demo] circuits of the {quarter} easiest vs {quarter} hardest samples "
          f"(top {signatures.n_edges_selected} of {signatures.n_edges_in_graph} edges, pruned):")
    print(to_markdown(signatures.statistics[columns]))


def _summary(demo: PipelineRun, table: pd.DataFrame) -> dict:
    per_method = {}
    config = demo.config
    for method in config.methods:
        seeds = config.method_seeds(method)
        summary = json.loads((config.outcome_folder(demo.out, method, seeds[0])
                              / SUMMARY_FILE).read_text())
        metrics = read_json(demo.out / UNLEARN_DIR / method / METRICS_FILE)
        per_method[method] = {
            "forget_loss_change": summary["forget"]["loss_after"] - summary["forget"][
                "loss_before"],
            "retain_loss_change": summary["retain"]["loss_after"] - summary["retain"][
                "loss_before"],
            "mean_efficacy": summary["mean_efficacy"],
            "forget_quality": metrics.get("forget_quality"),
            "model_utility": metrics.get("model_utility"),
            "seeds": len(seeds),
        }
    return {
        "n_forget": len(demo.forget), "n_retain": len(demo.retain),
        "target_forget_prob": mean_answer_prob(demo.target, demo.tokenizer, demo.forget),
        "target_epochs": _epochs_trained(demo.out / TARGET_DIR),
        "methods": per_method, "timings_s": demo.timings,
    }


def _print_summary(demo: PipelineRun, summary: dict, table: pd.DataFrame) -> None:
    print(f"\n[demo] target model: mean forget answer probability "
          f"{summary['target_forget_prob']:.3f} after {summary['target_epochs']} epochs")
    methods = pd.DataFrame(summary["methods"]).T
    print("[demo] unlearning (loss changes, efficacy, TOFU-style metrics):")
    print(methods.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\n[demo] validation on held-out samples (measured difficulty rank-averaged over "
          "methods):")
    print(correlation_markdown(table[table.method == "mean"]))
    print("[demo] reliability of measured difficulty per method (seed mean of -efficacy):")
    print(to_markdown(reliability_summary(pd.read_csv(demo.out / VALIDATION_DIR /
                                                      RELIABILITY_FILE)), floatfmt=".3f"))
    _print_circuit_comparison(demo)
    sets = demo.out / VALIDATION_DIR / SETS_FILE
    if sets.is_file():
        frame = pd.read_csv(sets)
        print("[demo] easy/hard sets, mean over methods (efficacy x100, delta vs random):")
        print(to_markdown(frame[frame.method == "mean"]))
    print(f"[demo] report: {demo.out / 'report.html'}")
