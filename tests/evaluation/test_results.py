"""The results file: append, resume after a torn write, no duplicates, and never a silent cut."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetthinker.errors import UserError
from budgetthinker.evaluation.results import KEY_FIELDS, ResultsFile


def rec(i: int, **extra) -> dict:
    base = dict.fromkeys(KEY_FIELDS, "x")
    base.update(problem_id=str(i), sample=0, budget=64, **extra)
    return base


def line(i: int) -> bytes:
    return (json.dumps(rec(i, text="é ✓ \\boxed{1}")) + "\n").encode()


def test_append_and_reload(tmp_path):
    path = tmp_path / "samples.jsonl"
    f = ResultsFile(path)
    f.append([rec(0), rec(1)])
    f.append([rec(1), rec(2)])  # rec(1) is already there
    again = ResultsFile(path)
    assert [r["problem_id"] for r in again.records] == ["0", "1", "2"]
    assert len(path.read_text().splitlines()) == 3


def test_torn_last_line_is_cut(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    ResultsFile(path).append([rec(0), rec(1)])
    with path.open("a") as f:
        f.write(json.dumps(rec(2))[:25])  # a crash in the middle of a write
    resumed = ResultsFile(path)
    assert [r["problem_id"] for r in resumed.records] == ["0", "1"]
    assert "torn last line" in capsys.readouterr().err
    resumed.append([rec(2)])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == ["0", "1", "2"]


def test_whole_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(line(0) + line(1)[:-1])  # the crash hit between the record and its "\n"
    assert [r["problem_id"] for r in ResultsFile(path).records] == ["0", "1"]
    assert path.read_bytes() == line(0) + line(1)


@pytest.mark.parametrize(
    "bad,reason",
    [
        (b'{"model": "x", "budg\n', "not JSON"),
        (b"\xff\xfe not utf-8\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"model": "x"}\n', "missing the key fields"),
    ],
)
def test_corrupt_line_in_the_middle_stops_and_keeps_the_file(tmp_path, bad, reason):
    path = tmp_path / "samples.jsonl"
    content = line(0) + bad + line(1) + line(2)
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        ResultsFile(path)
    assert f"{path}:2 " in str(e.value) and reason in str(e.value)
    assert "unchanged" in str(e.value)
    assert path.read_bytes() == content


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
    garbage=st.binary(min_size=1, max_size=40),
)
def test_one_corrupt_line_never_loses_a_valid_line(tmp_path_factory, n, data, garbage):
    """Random valid lines, one corrupted at a random position (replaced by random bytes, or
    torn when it is the last): every valid line is still in the file afterwards, and it is read
    back unless the run stopped on the corrupt line."""
    path = tmp_path_factory.mktemp("r") / "samples.jsonl"
    lines = [line(i) for i in range(n)]
    at = data.draw(st.integers(min_value=0, max_value=n - 1), label="position")
    torn = at == n - 1 and data.draw(st.booleans(), label="torn")
    if torn:
        cut = data.draw(st.integers(min_value=0, max_value=len(lines[at]) - 2), label="cut")
        lines[at] = lines[at][:cut]
    else:
        lines[at] = garbage.replace(b"\n", b" ") + b"\n"
    content = b"".join(lines)
    path.write_bytes(content)
    valid = [line(i) for i in range(n) if i != at]
    try:
        loaded = ResultsFile(path)
    except UserError as e:
        assert f":{at + 1} " in str(e)
        assert path.read_bytes() == content
        return
    after = path.read_bytes()
    for good in valid:
        assert good in after
    ids = {r["problem_id"] for r in loaded.records}
    assert {str(i) for i in range(n) if i != at} <= ids


def test_round_journal_survives_a_torn_line(tmp_path):
    """The runner's journal of finished rounds: a line torn by a kill must not swallow the entry
    appended after the resume (it would join the torn line and be unreadable too)."""
    from budgetthinker.evaluation.runner import Journal
    from budgetthinker.generation import GenResult

    path = tmp_path / "rounds.jsonl"
    Journal(path).write([("a", GenResult([1, 2], "length"))])
    with path.open("a") as f:
        f.write('{"key": "b", "result": {"token_')  # killed mid-write
    resumed = Journal(path)
    assert [r.token_ids for r in resumed.replay("a")] == [[1, 2]]
    resumed.write([("c", GenResult([3], "stop"))])
    again = Journal(path)
    assert [r.token_ids for r in again.replay("c")] == [[3]] and again.replay("b") == []
