"""On-disk store of per-sample edge scores: sharded safetensors, float16, real edges only.

Folder layout:
- `header.json`: model, graph layout (`n_layers`, `n_heads`), attribution settings (`method`,
  `ig_steps`, `baseline`, `rule`, `metric`) and anything else the writer records.
- `scores-rank<r>-<seq>.safetensors`: one shard per flush of one process, holding
  `edge_scores` `[n, n_edges]` float16 and `scale` `[n]` float32, with the shard's sample ids
  in the file's metadata. A shard is written to a temporary name and renamed, so every shard
  on disk is complete; a killed run resumes from them.
- `index.json`: sample id -> (shard, row), merged from the shards on the main process. When
  shards exist that the index does not list (a killed run), readers rebuild it from the shards.

Scores are stored as `edge_scores * scale` recovered per sample: each sample is divided by a
power of two at or above its largest |score| before the float16 cast. Raw float16 overflows
above 65504 and flushes scores below 6e-8 to zero (both occur: RMSNorm gradients at a zero
baseline are large, tiny models' scores are small); the scaled values sit in [-1, 1] and keep
float16's 11-bit relative precision, and power-of-two scaling is exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unlearnscope.circuits.graph import GraphLayout
from unlearnscope.circuits.selection import edge_matrix, edge_vector, select
from unlearnscope.errors import DataError
from unlearnscope.layout import HEADER_FILE, INDEX_FILE
from unlearnscope.progress import progress_bar
from unlearnscope.runs import atomic_write, check_finite, check_unchanged, write_json

FORMAT = "unlearnscope-circuits-1"
_SHARD = re.compile(r"scores-rank(\d+)-(\d+)\.safetensors")


def shard_files(directory: str | Path) -> list[Path]:
    """The finished shards in a store folder, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _SHARD.fullmatch(p.name))


def read_header(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / HEADER_FILE
    if not path.is_file():
        raise DataError("not a circuit store (no header.json)", source=str(directory))
    with open(path, encoding="utf-8") as handle:
        header = json.load(handle)
    for key in ("n_layers", "n_heads"):
        if key not in header:
            raise DataError("missing key", source=str(path), field=key)
    return header


def write_header(directory: str | Path, header: dict[str, Any]) -> None:
    """Write `header.json` (needs `n_layers` and `n_heads`; the format tag is added)."""
    for key in ("n_layers", "n_heads"):
        if key not in header:
            raise DataError("circuit store header needs the graph layout", field=key)
    write_json(Path(directory) / HEADER_FILE, {"format": FORMAT, **header})


def check_header(directory: str | Path, header: dict[str, Any]) -> None:
    """Raise `DataError` if the stored header disagrees with `header` on any of its keys
    (resuming with other settings would mix incompatible scores)."""
    check_unchanged(read_header(directory), header, keys=header,
                    source=str(Path(directory) / HEADER_FILE),
                    hint="resume with the same settings or write to a new folder")


ATTRIBUTION_KEYS = ("method", "ig_steps", "baseline", "rule", "metric")


def check_attribution(header: dict[str, Any], wanted: dict[str, Any], *, source: str,
                      needed_by: str) -> None:
    """Raise `DataError` naming every attribution setting (`ATTRIBUTION_KEYS`) in `wanted`
    that the store `header` records with another value (or not at all)."""
    wrong = [key for key in ATTRIBUTION_KEYS if key in wanted and header.get(key) != wanted[key]]
    if wrong:
        found = ", ".join(f"{key}={header.get(key)!r}" for key in wrong)
        needed = ", ".join(f"{key}={wanted[key]!r}" for key in wrong)
        raise DataError(f"the circuits were attributed with {found}; {needed_by} needs "
                        f"{needed}: compute a store with those settings", source=source,
                        field=wrong[0])


def clear(directory: str | Path) -> None:
    """Remove the header, the index and every shard of a store folder."""
    directory = Path(directory)
    for path in [*shard_files(directory), directory / INDEX_FILE, directory / HEADER_FILE]:
        if path.exists():
            path.unlink()


def _power_of_two_scale(edge_scores: torch.Tensor) -> torch.Tensor:
    """`[n]` float32: the smallest power of two >= each row's max |score| (1 for zero rows)."""
    peak = edge_scores.abs().amax(dim=-1).double()
    exponent = torch.ceil(torch.log2(peak.clamp(min=torch.finfo(torch.float64).tiny)))
    return torch.where(peak > 0, torch.exp2(exponent), torch.ones_like(peak)).float()


def _shard_ids(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise DataError(f"unreadable shard: {error}", source=str(path)) from None
    if "sample_ids" not in metadata:
        raise DataError("shard without sample ids in its metadata", source=str(path),
                        field="sample_ids")
    return json.loads(metadata["sample_ids"])


class ShardWriter:
    """Appends samples' scores to a store folder, one process each, shard by shard.

    Buffers `shard_size` samples, then writes them as one shard named with this process's
    `rank` and the next free sequence number of that rank.
    """

    def __init__(self, directory: str | Path, layout: GraphLayout, *, rank: int = 0,
                 shard_size: int = 32) -> None:
        self.directory = Path(directory)
        self.layout = layout
        self.rank = rank
        self.shard_size = shard_size
        self._ids: list[str] = []
        self._rows = torch.empty((0, layout.n_edges))
        taken = [int(m.group(2)) for p in shard_files(self.directory)
                 if (m := _SHARD.fullmatch(p.name)) and int(m.group(1)) == rank]
        self._next_seq = max(taken, default=-1) + 1

    def add(self, sample_ids: Sequence[str], scores: torch.Tensor) -> None:
        """Queue `scores` `[n, n_forward, n_backward]` of `sample_ids`; write every full shard
        of `shard_size` samples."""
        if scores.shape != (len(sample_ids), self.layout.n_forward, self.layout.n_backward):
            raise DataError(f"scores of shape {tuple(scores.shape)} for {len(sample_ids)} "
                            f"samples do not fit the layout {self.layout}")
        check_finite(scores, f"edge scores of samples {', '.join(sample_ids)}")
        self._ids.extend(sample_ids)
        self._rows = torch.cat([self._rows, edge_vector(scores.detach().float().cpu(),
                                                        self.layout)])
        while len(self._ids) >= self.shard_size:
            self._write(self.shard_size)

    def flush(self) -> Path | None:
        """Write every queued sample as one shard (atomically); returns its path."""
        return self._write(len(self._ids)) if self._ids else None

    def _write(self, n: int) -> Path:
        """Write the first `n` queued samples as the next shard."""
        ids, edge_scores = self._ids[:n], self._rows[:n]
        scale = _power_of_two_scale(edge_scores)
        tensors = {"edge_scores": (edge_scores / scale[:, None]).half().contiguous(),
                   "scale": scale}
        metadata = {"format": FORMAT, "sample_ids": json.dumps(ids)}
        path = self.directory / f"scores-rank{self.rank:03d}-{self._next_seq:06d}.safetensors"
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        self._next_seq += 1
        self._ids, self._rows = self._ids[n:], self._rows[n:]
        return path

    def close(self) -> None:
        self.flush()


def scan_index(directory: str | Path) -> dict[str, tuple[str, int]]:
    """Sample id -> (shard file name, row), read from every shard's metadata."""
    index: dict[str, tuple[str, int]] = {}
    for path in shard_files(directory):
        for row, sample_id in enumerate(_shard_ids(path)):
            if sample_id in index:
                raise DataError(f"sample '{sample_id}' is stored twice (also in "
                                f"{index[sample_id][0]})", source=str(path), field="sample_ids")
            index[sample_id] = (path.name, row)
    return index


def write_index(directory: str | Path) -> dict[str, tuple[str, int]]:
    """Merge the shards of every process into `index.json` (run it on the main process once
    all processes have flushed)."""
    index = scan_index(directory)
    write_json(Path(directory) / INDEX_FILE,
               {"shards": sorted({shard for shard, _ in index.values()}),
                "samples": {sample_id: list(where) for sample_id, where in index.items()}})
    return index


def _read_index(directory: Path) -> dict[str, tuple[str, int]]:
    path = directory / INDEX_FILE
    on_disk = [p.name for p in shard_files(directory)]
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored.get("shards") == on_disk:
            return {sample_id: (shard, int(row))
                    for sample_id, (shard, row) in stored["samples"].items()}
    return scan_index(directory)


@dataclass
class CircuitStore:
    """Read access to a store folder; shards are opened lazily (memory-mapped) per read."""

    directory: Path
    header: dict[str, Any]
    index: dict[str, tuple[str, int]]

    @classmethod
    def open(cls, directory: str | Path) -> CircuitStore:
        directory = Path(directory)
        return cls(directory, read_header(directory), _read_index(directory))

    @property
    def layout(self) -> GraphLayout:
        return GraphLayout(int(self.header["n_layers"]), int(self.header["n_heads"]),
                           bool(self.header.get("parallel_attn_mlp", False)))

    @property
    def sample_ids(self) -> list[str]:
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.index

    def edge_scores(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """Scores of the real edges, `[n, n_edges]` float32, in the order of `sample_ids`."""
        missing = [s for s in sample_ids if s not in self.index]
        if missing:
            raise DataError(f"no stored circuit for sample(s) {', '.join(missing[:10])}",
                            source=str(self.directory))
        n_edges = self.layout.n_edges
        out = torch.empty((len(sample_ids), n_edges), dtype=torch.float32)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, sample_id in enumerate(sample_ids):
            shard, row = self.index[sample_id]
            by_shard.setdefault(shard, []).append((position, row))
        for shard, wanted in by_shard.items():
            path = self.directory / shard
            with safe_open(str(path), framework="pt") as handle:
                stored, scale = handle.get_slice("edge_scores"), handle.get_tensor("scale")
                if stored.get_shape()[1] != n_edges:
                    raise DataError(f"shard has {stored.get_shape()[1]} edges, the layout "
                                    f"{n_edges}", source=str(path), field="edge_scores")
                for position, row in wanted:
                    out[position] = stored[row: row + 1][0].float() * scale[row]
        return out

    def circuits(self, sample_ids: Sequence[str], selection: str = "topn", *,
                 n: int | None = None, threshold: float | None = None,
                 chunk_size: int = 256) -> torch.Tensor:
        """Selected circuits (see `selection.select`) `[n_samples, n_forward, n_backward]`
        bool, read and selected `chunk_size` samples at a time to bound memory."""
        layout = self.layout
        masks = torch.zeros((len(sample_ids), layout.n_forward, layout.n_backward),
                            dtype=torch.bool)
        for start in progress_bar(range(0, len(sample_ids), chunk_size), unit="chunk",
                                  leave=False, desc=f"selecting ({selection})",
                                  disable=len(sample_ids) <= chunk_size):
            chunk = list(sample_ids[start: start + chunk_size])
            masks[start: start + len(chunk)] = select(self.scores(chunk), layout, selection,
                                                      n=n, threshold=threshold)
        return masks

    def mean_scores(self, sample_ids: Sequence[str], *, chunk_size: int = 256
                    ) -> torch.Tensor:
        """A set's aggregate scores: the mean over `sample_ids`, `[n_forward, n_backward]`
        float32 (accumulated in float64, `chunk_size` samples at a time)."""
        if not sample_ids:
            raise DataError("cannot aggregate the circuits of an empty set of samples")
        total = torch.zeros(self.layout.n_edges, dtype=torch.float64)
        for start in range(0, len(sample_ids), chunk_size):
            chunk = list(sample_ids[start: start + chunk_size])
            total += self.edge_scores(chunk).double().sum(dim=0)
        return edge_matrix((total / len(sample_ids)).float(), self.layout)

    def scores(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """Scores in the reference layout, `[n, n_forward, n_backward]` float32 (zero off the
        real edges)."""
        return edge_matrix(self.edge_scores(sample_ids), self.layout)
