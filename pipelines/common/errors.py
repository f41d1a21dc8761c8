"""The one base of every error the project reports to a user.

A `PipelinesError` is a problem the user can fix (bad input, a missing file or venv, a server that does not
answer): its message is one sentence naming the file, key or command and what to do. `python -m pipelines`
(`pipelines.cli.main`) prints it without a traceback and exits 1; anything else that escapes is a bug and keeps
its traceback. Library code raises these, never SystemExit. Each stage keeps its own subclass (ConvertError,
CheckError, ServeError, EvalError, …), which also keeps its older base (ValueError, RuntimeError) for callers
that catch that.
"""

from __future__ import annotations


class PipelinesError(Exception):
    """A user-facing problem, said in one sentence."""


class SetupNeeded(PipelinesError):
    """A venv or an executable that `make setup` provides is missing."""
