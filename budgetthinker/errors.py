"""The one exception type for mistakes a user can make, and the one way every entry point
reports them.

Every command (`budgetthinker …`, the pipeline scripts, `python preparation/add_special_tokens.py`)
ends in `report_errors`: a `UserError` or an unwritable/full output folder is one line on stderr
and exit status 2 (no traceback), Ctrl-C one line and 130. So every message must say what is
wrong *and* how to fix it.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


WRITE_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
    errno.ENOTDIR, errno.ENAMETOOLONG,
})  # fmt: skip
"""OS errors that are the user's environment, not a bug: reported as one line, like a
UserError."""
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
        target = f" {e.filename}" if e.filename else ""
        print(
            f"{where}: error: cannot write{target}: {e.strerror}; choose an output folder you "
            "can write to (--out, output_dir=…) or free space there",
            file=sys.stderr,
        )
        return USAGE
    except KeyboardInterrupt:
        print(f"\n{where}: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
