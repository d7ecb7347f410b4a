"""Generic JSON-lines question/answer files: `jsonl:<path>`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file; a byte that is not UTF-8 is a `DataError` naming the file and
    its line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"not UTF-8 (byte {data[error.start]:#04x}); save the file as UTF-8",
                        source=str(path), line=line) from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read a JSON-lines file; every non-blank line must be an object with `required` fields.

    A file holding one JSON array (the hub's export format) is accepted too. Errors name the
    file, the 1-based line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    text = read_utf8(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise DataError(f"malformed JSON array: {error.msg}", source=str(path),
                            line=error.lineno) from None
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"malformed JSON: {error.msg} (column {error.colno})",
                                source=str(path), line=number) from None
    for number, row in numbered:
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}",
                            source=str(path), line=number)
        for name in required:
            if name not in row:
                raise DataError("missing field", source=str(path), line=number, field=name)
            value = row[name]
            if not isinstance(value, str):
                raise DataError(f"expected a string, got {type(value).__name__}",
                                source=str(path), line=number, field=name)
            if not value.strip():
                raise DataError("empty value", source=str(path), line=number, field=name)
    return [row for _, row in numbered]


def load_jsonl(path: str, *, question_field: str = "question", answer_field: str = "answer",
               id_field: str | None = None) -> list[Sample]:
    """Samples from a JSON-lines file; other fields go to `Sample.extra`.

    `id_field` names a field holding unique ids; without it the id is the row number.
    """
    rows = read_jsonl(path, required=(question_field, answer_field))
    samples = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if id_field is not None:
            if id_field not in row:
                raise DataError("missing field", source=path, line=index + 1, field=id_field)
            sample_id = str(row[id_field])
            if sample_id in seen:
                raise DataError(f"duplicate id '{sample_id}' (first at row {seen[sample_id]})",
                                source=path, line=index + 1, field=id_field)
            seen[sample_id] = index + 1
        else:
            sample_id = f"{index:05d}"
        extra = {k: v for k, v in row.items() if k not in (question_field, answer_field, id_field)}
        samples.append(Sample(sample_id, row[question_field], row[answer_field], extra))
    return samples
