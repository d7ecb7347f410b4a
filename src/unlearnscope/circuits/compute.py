"""Compute and store per-sample circuits for a dataset: sharded across processes, resumable.

`compute_circuits` is what `unlearnscope circuits` runs: samples are split between processes
(`unlearnscope.distributed`), each process attributes its samples batch by batch and appends
their scores to its own shards in the store folder (see `store`); the main process then merges
the index. With `resume=True` the samples already in finished shards are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearnscope import distributed
from unlearnscope.circuits.attribution import attribute, make_backend
from unlearnscope.circuits.plan import graph_layout
from unlearnscope.circuits.store import (
    CircuitStore,
    ShardWriter,
    check_header,
    clear,
    scan_index,
    write_header,
    write_index,
)
from unlearnscope.data.sample import Sample
from unlearnscope.data.tokenize import iter_batches, pad_id
from unlearnscope.errors import DataError
from unlearnscope.layout import HEADER_FILE
from unlearnscope.models.inputs import encode_for
from unlearnscope.progress import progress_bar

# What `compute_circuits` (and the `circuits` command, the `cud` scorer) attribute with by default.
ATTRIBUTION_DEFAULTS: dict[str, Any] = {"method": "EAP-IG-inputs", "ig_steps": 5,
                                        "baseline": "zero", "rule": "left",
                                        "metric": "answer_logprob"}
# Attribution settings of named presets; `paper`: the CUD authors' (arXiv 2601.09624) code,
# EAP-IG-activations with 5 steps from zero activations on their length-normalized answer
# probability metric (see `attribution` and `metrics.paper_prob_diff`).
ATTRIBUTION_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"method": "EAP-IG-activations", "ig_steps": 5, "baseline": "zero-activations",
              "rule": "left", "metric": "paper_prob_diff"},
}


def store_header(model, *, method: str, ig_steps: int, baseline: str, rule: str, metric: str,
                 model_name: str | None = None) -> dict[str, Any]:
    """The header fields of a store of `model`'s circuits with these attribution settings:
    the ones a resume must find unchanged."""
    layout = graph_layout(model)
    return {"model": model_name or getattr(model.config, "name_or_path", None),
            "n_layers": layout.n_layers, "n_heads": layout.n_heads,
            "parallel_attn_mlp": layout.parallel_attn_mlp,
            "d_model": int(model.config.hidden_size), "method": method,
            "ig_steps": None if method == "EAP" else ig_steps,
            "baseline": baseline, "rule": rule, "metric": metric}


def check_resumable(directory: str | Path, header: dict[str, Any]) -> None:
    """Refuse (`DataError`) to resume the store in `directory` when its header disagrees with
    `header` (`store_header`); a folder without a store is resumable (it starts afresh)."""
    if (Path(directory) / HEADER_FILE).is_file():
        check_header(directory, header)


def _start_store(directory: Path, header: dict[str, Any], extra: dict[str, Any], *,
                 resume: bool) -> set[str]:
    """Check `header` (resume) or write `header` + `extra`; returns the ids already stored."""
    if resume and (directory / HEADER_FILE).is_file():
        # every process checks, so a mismatch stops all of them instead of leaving some
        # waiting at the barrier
        check_resumable(directory, header)
    elif distributed.is_main():
        clear(directory)
        write_header(directory, {**header, **extra})
    distributed.barrier()
    return set(scan_index(directory)) if resume else set()


def compute_circuits(model, tokenizer, samples: Sequence[Sample], directory: str | Path, *,
                     method: str = "EAP-IG-inputs", ig_steps: int = 5, baseline: str = "zero",
                     rule: str = "left", metric: str = "answer_logprob", batch_size: int = 8,
                     shard_size: int = 32, max_length: int | None = None, resume: bool = False,
                     model_name: str | None = None, backend: str = "hooks",
                     header_extra: dict[str, Any] | None = None) -> CircuitStore | None:
    """Attribute every sample (`attribute(...)` per batch) and store its edge scores in
    `directory`; returns the store on the main process (None on the others).

    Without `resume` the folder is cleared first. `header_extra` adds fields to the header
    that are not checked on resume (e.g. the data spec). `backend`: see `attribute`.
    """
    directory = Path(directory)
    layout = graph_layout(model)
    header = store_header(model, method=method, ig_steps=ig_steps, baseline=baseline, rule=rule,
                          metric=metric, model_name=model_name)
    done = _start_store(directory, header, header_extra or {}, resume=resume)
    pending = [s for s in samples if s.id not in done]
    encoded = encode_for(model, tokenizer, distributed.shard(pending), max_length).samples
    # Scores do not depend on the batch composition, so sorting by length only saves padding.
    encoded = sorted(encoded, key=lambda e: len(e.prompt_ids) + len(e.answer_ids))
    writer = ShardWriter(directory, layout, rank=distributed.rank(), shard_size=shard_size)
    bar = progress_bar(total=len(encoded), desc=f"circuits ({method})", unit="sample",
                       disable=not distributed.is_main())
    runner = make_backend(model, backend)  # built once: the bridge backend builds its bridge
    for rows, batch in iter_batches(encoded, batch_size, pad_id(tokenizer)):
        result = attribute(model, batch, method=method, ig_steps=ig_steps, baseline=baseline,
                           rule=rule, metric=metric, backend=runner)
        writer.add([encoded[i].sample_id for i in rows], result.scores)
        bar.update(len(rows))
    writer.close()
    bar.close()
    distributed.barrier()
    if not distributed.is_main():
        return None
    index = write_index(directory)
    absent = [s.id for s in samples if s.id not in index]
    if absent:
        raise DataError(f"{len(absent)} samples have no stored circuit: {', '.join(absent[:10])}",
                        source=str(directory))
    return CircuitStore.open(directory)
