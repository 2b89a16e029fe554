"""The example of docs/methods/custom.md ("Writing a method"), taken from that page itself: it
loads by dotted path, runs its two rounds on the embedded model and returns what it says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from budgetthinker.delimiters import detect
from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import METHODS, SampleContext, get_method
from budgetthinker.evaluation.runner import run_episodes

DOCS_PAGE = Path(__file__).resolve().parents[3] / "docs" / "methods" / "custom.md"


@pytest.fixture
def docs_method(tmp_path, monkeypatch):
    code = re.search(r"```python\n(# mymethods\.py\n.*?)```", DOCS_PAGE.read_text(), re.S).group(1)
    (tmp_path / "mymethods.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("mymethods", None)
    METHODS.pop("twice", None)


@pytest.mark.slow
def test_docs_method_runs(docs_method, hf_backend, tokenizer, spec, prompt_ids):
    method = get_method({"name": "mymethods:Twice", "phrase": " Answer:"})
    assert method.display_name == "twice[phrase= Answer:]"
    ctx = SampleContext(
        prompt_ids=prompt_ids[0], budget=8, tokenizer=tokenizer, spec=spec,
        delimiters=detect(tokenizer, spec), max_new_tokens=None,
    )  # fmt: skip
    [outcome] = run_episodes([method.episode(ctx)], hf_backend)
    phrase = tokenizer.encode(" Answer:", add_special_tokens=False)
    n = outcome.thinking_tokens
    assert outcome.rounds == 2 and 0 < n <= 8  # thinking within the budget
    assert outcome.output_ids[n : n + len(phrase)] == phrase
    assert len(outcome.output_ids) > n + len(phrase)  # the second round answered
    assert get_method("twice").name == "twice"  # registered on import


def test_dotted_path_errors():
    with pytest.raises(UserError, match="cannot load method 'nowhere.mod:M'"):
        get_method("nowhere.mod:M")
    with pytest.raises(UserError, match="'pathlib:Path' is not a Method subclass"):
        get_method("pathlib:Path")


@pytest.mark.parametrize("name", [".", "..", "a.", ".a", ":x", "a:", "1.2"])
def test_a_dotted_path_that_names_nothing_is_one_line(name):
    """Issue #21: `methods=[.]` was a traceback (importlib's "Empty module name")."""
    from budgetthinker.evaluation.methods import get_methods

    with pytest.raises(UserError, match=f"cannot load method {re.escape(repr(name))}"):
        get_methods([name])


def test_methods_dot_on_the_cli(tmp_path):
    from tests.clirun import cli, eval_args, one_line, snapshot

    proc = cli(*eval_args(tmp_path / "runs", "e", "methods=[.]"))
    one_line(proc, "cannot load method '.'", "package.module:Class")
    assert snapshot(tmp_path) == {}
