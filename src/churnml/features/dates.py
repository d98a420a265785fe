"""The date users give (``as_of``): parsing, defaults and refusals, the same for every stage.

Features at ``as_of`` use events on or before that day; labels look at ``(as_of, as_of + horizon]``.
"""

from __future__ import annotations

import datetime as dt

from churnml.errors import UserValueError


def as_date(value: str | dt.date | dt.datetime) -> dt.date:
    """A date given as ``YYYY-MM-DD``, date or datetime, as a date.

    Raises
    ------
    churnml.errors.UserValueError
        If the text is not an ISO 8601 date (a ValueError too).
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise UserValueError(f"'{value}' is not a date: give as_of as YYYY-MM-DD") from None


def window_is_closed(as_of: dt.date, horizon_days: int, last_date: dt.date) -> bool:
    """Whether the label window ``(as_of, as_of + horizon_days]`` ends on or before the last date with data."""
    return as_of + dt.timedelta(days=horizon_days) <= last_date


def resolve_as_of(
    as_of: str | dt.date | None,
    first_date: dt.date,
    last_date: dt.date,
    horizon_days: int | None = None,
) -> dt.date:
    """The ``as_of`` date of a stage: given, or its default; refused where the data cannot serve it.

    Parameters
    ----------
    as_of : str, date or None
        ``YYYY-MM-DD`` or a date; None for the default.
    first_date, last_date : datetime.date
        The first and last dates with a transaction.
    horizon_days : int, optional
        For a date whose outcome must be known (a holdout, a backtest): the label window's length.
        The default is then ``last_date - horizon_days``, the latest date with a closed window.
        Without it (features, scoring) the default is ``last_date``.

    Returns
    -------
    datetime.date

    Raises
    ------
    churnml.errors.UserValueError
        (a ValueError too) If ``as_of`` is before the first date in the data (no customer has
        history), after the last one (the days in between would look like days without purchases), or, with
        ``horizon_days``, not after the first date or too late for its label window to close.
    """
    if horizon_days is None:
        day = as_date(as_of) if as_of else last_date
        if day < first_date:
            raise UserValueError(f"as_of {day} is before the first date in the data ({first_date}): "
                                 f"no customer has history yet; use {first_date} or later")
        if day > last_date:
            raise UserValueError(
                f"as_of {day} is after the last date in the data ({last_date}): the days in between have no data "
                f"and would look like days without purchases; use {last_date} or earlier"
            )
        return day
    latest = last_date - dt.timedelta(days=horizon_days)
    day = as_date(as_of) if as_of else latest
    if not window_is_closed(day, horizon_days, last_date):
        raise UserValueError(
            f"as_of {day} plus the {horizon_days}-day horizon passes the last date in the data ({last_date}): "
            f"its labels are not known yet; use {latest} or earlier"
        )
    if day <= first_date:
        raise UserValueError(f"as_of {day} is not after the first date in the data ({first_date}): "
                             f"give a later as_of")
    return day
