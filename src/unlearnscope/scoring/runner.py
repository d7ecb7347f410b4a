"""Score a dataset with several scorers, sharded across processes, resumable.

Layout of the output folder:
- `scores.parquet`: one row per (sample, scorer): `sample_id, scorer, value, difficulty`.
- `scorers.json`: `{scorer name: Scorer.config()}` for every scorer with rows in
  `scores.parquet`; `read_scorer_configs` reads it (or the `scorer_configs` of `config.json`).
- `progress/scores-rank<r>.jsonl`: values appended chunk by chunk as they are computed, each
  with the digest of its scorer's resolved options (`options_digest`);
  `progress/scorer-options.jsonl`: the options behind each digest. With `resume=True` finished
  (sample, scorer, options) triples are skipped, whatever the earlier process count; values
  recorded under other options of a scorer are not reused, and the options that changed are
  logged by name. `check_resume_options` refuses such a change instead (`score --resume`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from unlearnscope import distributed
from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError
from unlearnscope.layout import (
    CONFIG_FILE,
    PROGRESS_DIR,
    SCORE_COLUMNS,
    SCORERS_FILE,
    SCORES_FILE,
    read_scores,
    score_progress_file,
    score_progress_files,
    scorer_options_file,
)
from unlearnscope.models.inputs import encode_for
from unlearnscope.progress import progress_bar
from unlearnscope.runs import (
    ProgressLog,
    changed_settings,
    check_finite,
    check_unchanged,
    read_json,
    write_json,
    write_parquet,
)
from unlearnscope.scoring.base import LogitScorer, Scorer, run_logit_scorers

log = logging.getLogger(__name__)

# config() entries that describe the scorer class, not options that could change its values
_DESCRIPTIVE_KEYS = ("name", "higher_is_harder", "uses_anchors", "value_is_ease")


def value_options(scorer: Scorer) -> dict[str, Any]:
    """The scorer's resolved options that its values depend on: `config()` without the
    class's descriptive entries, normalized to plain JSON types."""
    config = {k: v for k, v in scorer.config().items() if k not in _DESCRIPTIVE_KEYS}
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def options_digest(options: dict[str, Any]) -> str:
    """A stable 16-hex-digit digest of `value_options(...)`."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _progress_logs(out_dir: Path) -> list[ProgressLog]:
    return [ProgressLog(p) for p in score_progress_files(out_dir)]


def _options_log(out_dir: Path) -> ProgressLog:
    return ProgressLog(scorer_options_file(out_dir))


def _finished(out_dir: Path) -> dict[tuple[str, str, str | None], float]:
    """(sample id, scorer, options digest) -> value; records written before digests were
    recorded get the digest None, so they are never reused."""
    done = {}
    for progress in _progress_logs(out_dir):
        for record in progress.read():
            done[(record["sample_id"], record["scorer"], record.get("options"))] = record["value"]
    return done


def _report_changed_options(out_dir: Path, samples: Sequence[Sample], scorers: Sequence[Scorer],
                            digests: dict[str, str],
                            done: dict[tuple[str, str, str | None], float]) -> None:
    """Log, per scorer with values still to compute and values recorded under other options,
    which options differ from the most recently recorded of those (they are not reused)."""
    recorded = {(r["scorer"], r["options"]): r["config"] for r in _options_log(out_dir).read()}
    for scorer in scorers:
        if all((s.id, scorer.name, digests[scorer.name]) in done for s in samples):
            continue
        others = [digest for (_, name, digest) in done
                  if name == scorer.name and digest != digests[scorer.name]]
        if not others:
            continue
        known = [d for (name, d) in recorded if name == scorer.name and d in set(others)]
        if known:
            changes = changed_settings(recorded[(scorer.name, known[-1])], value_options(scorer))
            what = f"its options changed ({'; '.join(changes)})"
        else:
            what = "its earlier values were recorded without their options"
        log.warning("scorer '%s': %s since %d values were recorded in %s; they are not reused "
                    "and the scorer is recomputed", scorer.name, what, len(others),
                    out_dir / PROGRESS_DIR)


def _record_options(out_dir: Path, scorers: Sequence[Scorer], digests: dict[str, str]) -> None:
    """Append the options of every (scorer, digest) not yet in the options log (main only)."""
    options_log = _options_log(out_dir)
    known = {(r["scorer"], r["options"]) for r in options_log.read()}
    options_log.append({"scorer": s.name, "options": digests[s.name],
                        "config": value_options(s)}
                       for s in scorers if (s.name, digests[s.name]) not in known)


def check_resume_options(out_dir: str | Path, scorers: Sequence[Scorer]) -> None:
    """Refuse to resume `out_dir` with a scorer whose options differ from the ones it was last
    recorded with there (`progress/scorer-options.jsonl`): a `DataError` naming each changed
    option as `<scorer>.<option>`. Scorers new to the folder may join. (`score_samples` itself
    recomputes such a scorer; `unlearnscope score --resume` continues a run instead.)"""
    log_ = _options_log(Path(out_dir))
    recorded = {r["scorer"]: r["config"] for r in log_.read()}
    old, new = {}, {}
    for scorer in scorers:
        if scorer.name in recorded:
            old.update({f"{scorer.name}.{k}": v for k, v in recorded[scorer.name].items()})
            new.update({f"{scorer.name}.{k}": v for k, v in value_options(scorer).items()})
    check_unchanged(old, new, source=str(log_.path),
                    hint="resume with the recorded options, or score without --resume (or into "
                         "a new folder) to recompute")


def read_scorer_configs(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`{scorer name: config}` of a score run folder (or its `scores.parquet`).

    Read from `scorers.json` (written by `score_samples`); without it, from the
    `scorer_configs` list in the folder's `config.json` (written by `unlearnscope score`);
    `{}` when neither is there.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    path = run_dir / SCORERS_FILE
    if path.is_file():
        configs = read_json(path)
        for name, config in configs.items():
            if not isinstance(config, dict):
                raise DataError("expected a scorer config object", source=str(path), field=name)
        return configs
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    listed = read_json(path).get("options", {}).get("scorer_configs")
    if listed is None:
        return {}
    if not isinstance(listed, list) or not all(isinstance(c, dict) and "name" in c
                                               for c in listed):
        raise DataError("expected a list of scorer configs, each with a name", source=str(path),
                        field="options.scorer_configs")
    return {str(c["name"]): c for c in listed}


def _score_chunk(scorers: Sequence[Scorer], model, tokenizer, samples: list[Sample],
                 encoded, batch_size: int, bar) -> dict[str, torch.Tensor]:
    logit_scorers = [s for s in scorers if isinstance(s, LogitScorer)]
    values: dict[str, torch.Tensor] = {}
    if logit_scorers:
        values.update(run_logit_scorers(logit_scorers, model, tokenizer, samples, encoded,
                                        batch_size=batch_size))
    for scorer in scorers:
        if not isinstance(scorer, LogitScorer):
            values[scorer.name] = scorer.score(model, tokenizer, samples, encoded,
                                               batch_size=batch_size)
        check_finite(values[scorer.name], f"scorer '{scorer.name}' "
                                          f"(samples {samples[0].id}..{samples[-1].id})")
    bar.update(len(samples))
    return values


def score_samples(model, tokenizer, samples: Sequence[Sample], scorers: Sequence[Scorer],
                  out_dir: str | Path, *, batch_size: int = 8, chunk_size: int = 64,
                  resume: bool = False, max_length: int | None = None,
                  merge: bool = False) -> pd.DataFrame:
    """Score `samples` with `scorers`; write and return the score table (main process).

    `merge=True` keeps the rows of other scorers already in `scores.parquet` (rows of the
    scorers computed now are replaced), so scorers can be added to a run one at a time.
    `scorers.json` gets every computed scorer's `config()` (with `merge=True` the entries of
    the kept scorers stay).

    Samples are split between processes; each process appends its values to its own progress
    file after every chunk of `chunk_size` samples, so a killed run loses at most one chunk.
    With `resume=True` a value is reused only if it was computed with the scorer's current
    options (see the module docstring).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len({s.name for s in scorers}) != len(scorers):
        raise DataError(f"scorer names must be distinct, got {[s.name for s in scorers]}")
    digests = {s.name: options_digest(value_options(s)) for s in scorers}
    if not resume and distributed.is_main():
        for progress in [*_progress_logs(out), _options_log(out)]:
            progress.clear()
    distributed.barrier()
    done = _finished(out) if resume else {}
    if resume and distributed.is_main():
        _report_changed_options(out, samples, scorers, digests, done)
    if distributed.is_main():
        _record_options(out, scorers, digests)
    keys = [(s.name, digests[s.name]) for s in scorers]
    pending = [i for i, s in enumerate(samples)
               if any((s.id, name, digest) not in done for name, digest in keys)]
    mine = distributed.shard(pending)
    progress = ProgressLog(score_progress_file(out, distributed.rank()))
    bar = progress_bar(total=len(pending), desc="scoring", unit="sample",
                       disable=not distributed.is_main(), initial=0)
    for start in range(0, len(mine), chunk_size):
        chunk_samples = [samples[i] for i in mine[start:start + chunk_size]]
        todo = [s for s in scorers
                if any((x.id, s.name, digests[s.name]) not in done for x in chunk_samples)]
        encoded = encode_for(model, tokenizer, chunk_samples, max_length).samples
        values = _score_chunk(todo, model, tokenizer, chunk_samples, encoded, batch_size, bar)
        progress.append({"sample_id": sample.id, "scorer": name, "options": digests[name],
                         "value": float(values[name][row])}
                        for name in values for row, sample in enumerate(chunk_samples))
    bar.close()
    distributed.barrier()
    if not distributed.is_main():
        return pd.DataFrame(columns=SCORE_COLUMNS)
    done = _finished(out)
    rows = []
    for scorer in scorers:
        for sample in samples:
            value = done[(sample.id, scorer.name, digests[scorer.name])]
            rows.append((sample.id, scorer.name, value, scorer.difficulty(value)))
    table = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    configs = {s.name: s.config() for s in scorers}
    existing = out / SCORES_FILE
    if merge and existing.is_file():
        kept = read_scores(existing)
        kept = kept[~kept.scorer.isin(set(configs))]
        table = pd.concat([kept, table], ignore_index=True)
        previous = read_scorer_configs(out) if (out / SCORERS_FILE).is_file() else {}
        configs = {**{n: c for n, c in previous.items() if n in set(kept.scorer)}, **configs}
    # Without scorers.json while the table is replaced, a reader never pairs new rows with
    # old configs (it falls back to config.json or finds none).
    (out / SCORERS_FILE).unlink(missing_ok=True)
    write_parquet(existing, table)
    write_json(out / SCORERS_FILE, configs)
    return table
