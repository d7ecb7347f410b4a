"""Score a dataset with several scorers, sharded across processes, resumable.

Layout of the output folder:
- `scores.parquet`: one row per (sample, scorer): `sample_id, scorer, value, difficulty`.
- `progress/scores-rank<r>.jsonl`: values appended chunk by chunk as they are computed; with
  `resume=True` finished (sample, scorer) pairs are skipped, whatever the earlier process count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from unlearnscope import distributed
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import encode_samples, model_max_length
from unlearnscope.progress import progress_bar
from unlearnscope.runs import ProgressLog, check_finite, write_parquet
from unlearnscope.scoring.base import LogitScorer, Scorer, run_logit_scorers

SCORE_COLUMNS = ["sample_id", "scorer", "value", "difficulty"]


def _progress_logs(out_dir: Path) -> list[ProgressLog]:
    return [ProgressLog(p) for p in sorted((out_dir / "progress").glob("scores-rank*.jsonl"))]


def _finished(out_dir: Path) -> dict[tuple[str, str], float]:
    done = {}
    for log in _progress_logs(out_dir):
        for record in log.read():
            done[(record["sample_id"], record["scorer"])] = record["value"]
    return done


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

    Samples are split between processes; each process appends its values to its own progress
    file after every chunk of `chunk_size` samples, so a killed run loses at most one chunk.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and distributed.is_main():
        for log in _progress_logs(out):
            log.clear()
    distributed.barrier()
    done = _finished(out) if resume else {}
    names = [s.name for s in scorers]
    pending = [i for i, s in enumerate(samples) if any((s.id, n) not in done for n in names)]
    mine = distributed.shard(pending)
    log = ProgressLog(out / "progress" / f"scores-rank{distributed.rank()}.jsonl")
    limit = max_length or model_max_length(tokenizer, model)
    bar = progress_bar(total=len(pending), desc="scoring", unit="sample",
                       disable=not distributed.is_main(), initial=0)
    for start in range(0, len(mine), chunk_size):
        chunk_samples = [samples[i] for i in mine[start:start + chunk_size]]
        todo = [s for s in scorers if any((x.id, s.name) not in done for x in chunk_samples)]
        encoded = encode_samples(tokenizer, chunk_samples, max_length=limit).samples
        values = _score_chunk(todo, model, tokenizer, chunk_samples, encoded, batch_size, bar)
        log.append({"sample_id": sample.id, "scorer": name, "value": float(values[name][row])}
                   for name in values for row, sample in enumerate(chunk_samples))
    bar.close()
    distributed.barrier()
    if not distributed.is_main():
        return pd.DataFrame(columns=SCORE_COLUMNS)
    done = _finished(out)
    rows = []
    for scorer in scorers:
        for sample in samples:
            value = done[(sample.id, scorer.name)]
            difficulty = value if scorer.higher_is_harder else -value
            rows.append((sample.id, scorer.name, value, difficulty))
    table = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    existing = out / "scores.parquet"
    if merge and existing.is_file():
        kept = pd.read_parquet(existing)
        kept = kept[~kept.scorer.isin({s.name for s in scorers})]
        table = pd.concat([kept, table], ignore_index=True)
    write_parquet(existing, table)
    return table
