"""The one exception type for a user's mistake in training.

A config value out of range, an unknown key, a missing or unreadable file, an event log without a
needed column, data with nothing to evaluate: raised where the mistake is found, caught by the
command lines (`python -m train`, `python -m train.catalog`), which print it on one line and exit
with 2. Any other exception is a bug and keeps its traceback.
"""
import sys


class UserError(ValueError):
    """What the user asked for cannot be done; the message says what to change."""


def cli_error(prog: str, err: UserError) -> int:
    """Print `prog: error: message` on one line (argparse's form) and return the exit code, 2."""
    print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2
