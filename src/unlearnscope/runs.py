"""Run folders: resolved configs, atomic writes, append-only progress and whole checkpoints
for `--resume`.

Every command writes only into its `--out` folder. Final files are written to a temporary
name and renamed, so a killed run never leaves a half-written table behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from unlearnscope import __version__
from unlearnscope.data.jsonl import read_utf8
from unlearnscope.errors import DataError, NonFiniteError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)`, then rename the result to `path` (same folder, so the
    rename is atomic): readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; final files get the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(Path(path), write)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; malformed JSON or another top-level type is a `DataError`
    naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON: {error.msg}", source=str(path),
                        line=error.lineno) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object", source=str(path))
    return data


_UNSET = object()


def _plain(values: Mapping[str, Any], key: str) -> Any:
    """`values[key]` as it reads back from JSON (tuples as lists, paths as text)."""
    if key not in values:
        return _UNSET
    return json.loads(json.dumps(values[key], default=_json_default))


def changed_keys(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
                 keys: Iterable[str] | None = None) -> list[str]:
    """The `keys` (default: every key of either, sorted) whose values differ as JSON; a key
    present on one side only differs."""
    keys = sorted(set(recorded) | set(wanted)) if keys is None else list(keys)
    return [key for key in keys if _plain(recorded, key) != _plain(wanted, key)]


def changed_settings(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
                     keys: Iterable[str] | None = None) -> list[str]:
    """`"key: recorded -> wanted"` for every key of `changed_keys` (an absent value reads
    `unset`)."""
    def shown(values: Mapping[str, Any], key: str) -> str:
        if key not in values:
            return "unset"
        return json.dumps(values[key], sort_keys=True, default=_json_default)

    return [f"{key}: {shown(recorded, key)} -> {shown(wanted, key)}"
            for key in changed_keys(recorded, wanted, keys)]


RESUME_HINT = "continue with the recorded settings, or write to a new folder"


def check_unchanged(recorded: Mapping[str, Any], wanted: Mapping[str, Any], *, source: str,
                    keys: Iterable[str] | None = None, hint: str = RESUME_HINT) -> None:
    """Refuse to continue a recorded run with other settings: a `DataError` naming every key
    of `keys` (default: every key of either) whose recorded value differs from the wanted one,
    with both values. Resumed and extended runs keep what was computed before, so changing
    one of these would mix two runs' results."""
    changed = changed_keys(recorded, wanted, keys)
    if changed:
        listed = "; ".join(changed_settings(recorded, wanted, changed))
        raise DataError(f"differs from the recorded run ({listed}); {hint}", source=source,
                        field=changed[0])


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    import accelerate
    import transformers

    return {
        "unlearnscope": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "git": git_hash(),
    }


def output_folder_problem(path: str | Path) -> str | None:
    """Why `path` cannot be an output folder, or None when it can: it, or the nearest of its
    parents that exists, is a file, or that nearest existing folder is not writable."""
    existing = Path(path).expanduser()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


CONFIG_FILE = "config.json"  # `unlearnscope.layout` names it with the run folder's other files


def write_config(out_dir: str | Path, command: str, options: dict[str, Any], *,
                 n_truncated: int | None = None) -> dict[str, Any]:
    """Write `config.json` with every resolved option and the software versions, and
    `n_truncated` (how many samples the command cut to its length limit) once it is known."""
    config = {"command": command, "options": options, "environment": environment()}
    if n_truncated is not None:
        config["n_truncated"] = int(n_truncated)
    write_json(Path(out_dir) / CONFIG_FILE, config)
    return config


def record_truncation(out_dir: str | Path, n_truncated: int) -> None:
    """Add `n_truncated` to the `config.json` the command wrote before it encoded its samples
    (rewritten atomically: the old or the new file, never a part)."""
    path = Path(out_dir) / CONFIG_FILE
    config = read_json(path)
    config["n_truncated"] = int(n_truncated)
    write_json(path, config)


class ProgressLog:
    """Append-only JSON-lines record of finished work, one object per line.

    Used for `--resume`: a killed run keeps every line flushed before the kill. A line counts
    only once its newline is written, so a torn last line (killed mid-write, or a full disk) is
    ignored on reading, even when its text happens to parse, and is cut off before the next
    append, which would otherwise write onto it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _complete_bytes(self) -> bytes:
        """The file up to and including its last newline."""
        data = self.path.read_bytes()
        return data[:data.rfind(b"\n") + 1]

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for number, line in enumerate(self._complete_bytes().splitlines(), start=1):
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"not a JSON line ({error}); delete the file to recompute "
                                "that work", source=str(self.path), line=number) from error
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            complete = self._complete_bytes()
            if self.path.stat().st_size != len(complete):
                with open(self.path, "r+b") as handle:
                    handle.truncate(len(complete))
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()


CHECKPOINT_STATE = "progress.json"  # where a checkpoint's loop stopped, beside its state


def _staging(folder: Path) -> Path:
    return folder.with_name(folder.name + ".tmp")


def save_checkpoint(accelerator, folder: str | Path, progress: dict[str, Any]) -> None:
    """Replace the checkpoint in `folder` (the Accelerate state of `accelerator` and
    `progress.json`) as a whole; every process calls it. The new one is written beside it and
    renamed into place, so a kill at any moment leaves the previous checkpoint (or, between
    its removal and the rename, none), never a torn one or a mix of two."""
    folder = Path(folder)
    staging = _staging(folder)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(staging / CHECKPOINT_STATE, progress)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, folder: str | Path) -> dict[str, Any]:
    """Restore `accelerator`'s state from the checkpoint in `folder`; returns its progress."""
    accelerator.load_state(str(folder))
    return read_json(Path(folder) / CHECKPOINT_STATE)


def remove_checkpoint(folder: str | Path) -> None:
    """Remove the checkpoint in `folder` and any half-written successor (main process)."""
    for path in (Path(folder), _staging(Path(folder))):
        shutil.rmtree(path, ignore_errors=True)


def check_finite(values: torch.Tensor | float, where: str) -> None:
    """Raise `NonFiniteError` naming `where` if `values` holds NaN or inf."""
    if isinstance(values, torch.Tensor):
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            index = bad.nonzero()[0].tolist()
            raise NonFiniteError(f"non-finite value in {where} at index {index}")
    elif not math.isfinite(values):
        raise NonFiniteError(f"non-finite value {values} in {where}")

