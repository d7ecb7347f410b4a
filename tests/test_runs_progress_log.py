"""ProgressLog: a line counts once its newline is written."""

import json

import pytest

from unlearnscope.errors import DataError
from unlearnscope.runs import ProgressLog


@pytest.mark.parametrize("torn", ['{"id": "c", "lo', '{"id": "c"}'])
def test_a_torn_last_line_is_dropped_and_the_next_append_does_not_write_onto_it(tmp_path, torn):
    """The second case parses as JSON but has no newline: appending after it used to glue the
    next record onto it, and every later read then stopped there."""
    path = tmp_path / "progress.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n' + torn, encoding="utf-8")
    log = ProgressLog(path)
    assert [record["id"] for record in log.read()] == ["a", "b"]
    log.append([{"id": "c"}, {"id": "d"}])
    assert [record["id"] for record in log.read()] == ["a", "b", "c", "d"]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c", "d"]


def test_a_corrupt_complete_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"progress.jsonl, line 2: not a JSON line"):
        ProgressLog(path).read()
