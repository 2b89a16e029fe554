"""The one exception type for mistakes a user can make.

The CLI prints such an error as a single line (no traceback) and exits with status 2, so every
message must say what is wrong *and* how to fix it.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""
