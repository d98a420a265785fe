"""The one exception a stage turns into its one-line message and exit code 2 (DESIGN.md section 7).

A :class:`UserError` is a mistake of the user's: data that breaks the contract, a config value,
a path, a model directory, a date. Its message says what is wrong, where and how to fix it, on
one line. Every other exception is a defect of churnml's and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's data, config, paths, models or dates: the message names what,
    where and how to fix it, on one line; the console script prints it and exits 2."""


class UserValueError(UserError, ValueError):
    """A user's mistake in a value (a date, a config setting), raised where a ValueError was
    raised before, so that callers catching ValueError still catch it."""


def one_line(message: object) -> str:
    """``message`` on one line: its lines stripped and joined with ``; `` (a console line, a log field)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
