"""The one exception type for mistakes a user can make, and the one way every entry point
reports them.

Every command (`budgetthinker …`, the pipeline scripts, `python preparation/add_special_tokens.py`)
ends in `report_errors`: a `UserError` or an unwritable/full output folder is one line on stderr
and exit status 2 (no traceback), Ctrl-C one line and 130. So every message must say what is
wrong *and* how to fix it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


WRITE_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
    errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
})  # fmt: skip
"""OS errors that are the user's environment, not a bug: reported as one line, like a
UserError (`EFBIG`: a file-size limit such as `ulimit -f`; Python ignores SIGXFSZ, so the write
fails instead of killing the process)."""
USAGE = 2
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


def report_errors(where: str, run: Callable[[], int | None]) -> int:
    """Run one command's body; return its exit status. The single error path of every entry
    point: `where` (e.g. `budgetthinker eval`) starts the one line. Outputs are written so that
    an interrupted run loses no finished work and leaves nothing half-written."""
    try:
        return run() or 0
    except UserError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return USAGE
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(_write_error(where, e.errno, e.strerror, e.filename), file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"\n{where}: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        code = native_write_errno(e)
        if code is None:
            raise
        print(_write_error(where, code, os.strerror(code), None), file=sys.stderr)
        return USAGE


_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def native_write_errno(error: BaseException) -> int | None:
    """The errno inside an error of a native writer (safetensors' and tokenizers' Rust code say
    `… File too large (os error 27)` in a non-OSError exception), if it is one of
    `WRITE_ERRNOS`; else None."""
    match = _NATIVE_OS_ERROR.search(str(error))
    code = int(match.group(1)) if match else None
    return code if code in WRITE_ERRNOS else None


def _write_error(where: str, code: int, strerror: str, filename) -> str:
    target = f" {filename}" if filename else ""
    fix = "choose an output folder you can write to (--out, output_dir=…) or free space there"
    if code == errno.EFBIG:
        fix = "raise the file-size limit (ulimit -f) or choose another output folder"
    return f"{where}: error: cannot write{target}: {strerror}; {fix}"
