"""The one error contract of every entry point (`errors.report_errors`)."""

from __future__ import annotations

import errno

import pytest

from budgetthinker.errors import INTERRUPTED, UserError, report_errors


def _raise(exc: BaseException):
    def body():
        raise exc

    return body


def test_user_errors_and_write_errors_are_one_line_and_status_2(capsys):
    assert report_errors("x y", _raise(UserError("bad thing; fix it"))) == 2
    assert capsys.readouterr().err == "x y: error: bad thing; fix it\n"
    full = OSError(errno.ENOSPC, "No space left on device", "/out/file")
    assert report_errors("x", _raise(full)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("x: error: cannot write /out/file: No space left on device; choose")


def test_ctrl_c_is_130_and_says_how_to_resume(capsys):
    assert report_errors("x", _raise(KeyboardInterrupt())) == INTERRUPTED == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


def test_bugs_are_not_hidden():
    with pytest.raises(OSError):
        report_errors("x", _raise(OSError(errno.EIO, "I/O error")))
    with pytest.raises(ZeroDivisionError):
        report_errors("x", lambda: 1 / 0)
    assert report_errors("x", lambda: None) == 0


@pytest.mark.parametrize(
    ("module", "argv", "prog"),
    [
        ("budgetthinker.cli", ["eval", "--config", "nope.yaml"], "budgetthinker eval"),
        ("budgetthinker.pipelines.release", ["default", "--config", "nope.yaml"],
         "release_pipeline"),
        ("budgetthinker.pipelines.experiment_cpu", ["--config", "nope.yaml"], "experiment_cpu"),
        ("budgetthinker.pipelines.release", ["merge-rl", "a"], "release_pipeline merge-rl"),
    ],
)  # fmt: skip
def test_every_entry_point_reports_the_same_way(capsys, tmp_path, monkeypatch, module, argv, prog):
    import importlib

    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{prog}: error: "), line
