"""The data contract: which tables and columns churnml reads, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from churnml.errors import UserError

ColumnKind = Literal["id", "timestamp", "number", "integer", "string"]

# Text that means "no value" in every column: pandas' read_csv defaults, which is also what R
# (NA), databases (NULL), spreadsheets (#N/A) and Python (None, nan) write. An empty or blank
# cell is missing as well; so is a floating-point NaN.
MISSING_MARKERS = (
    "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)


@dataclass(frozen=True)
class AnswerScales:
    """The scale a number column's values must be on, by the value of a text column.

    Parameters
    ----------
    column
        The number column (a survey's ``score``).
    by
        The text column that picks the scale (a survey's ``kind``).
    scales
        Value of ``by`` to the ``(low, high)`` of its scale: whole numbers from low to high.
        Rows whose ``by`` value is not listed are left to the check of allowed values.
    """

    column: str
    by: str
    scales: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class TableSpec:
    """Columns of one input table of the contract.

    Parameters
    ----------
    name
        Table name used in messages and configuration (``transactions`` ...).
    kinds
        Contract column name to the kind of value it must hold.
    required
        Columns that must be present and non-null.
    keep_extra
        Whether columns outside the contract are kept (static customer attributes).
    unique
        Columns whose values together must identify a row (``("customer_id",)``: one row per
        customer; ``("customer_id", "campaign")``: one row per customer and campaign).
    allowed
        Text column to the values it may hold; other values are refused (compared without case
        or surrounding blanks, and kept lower-case).
    scales
        The scale a number column's values must be on, by the value of a text column.
    non_negative
        Number columns whose values must be 0 or more (a contact's cost).
    filled
        Optional number columns that every row gets when the table lacks them, with the value
        it gets (a transactions file without ``amount``: each line a purchase of 1). Where the
        table has one, it must not be empty, as a required column.
    """

    name: str
    kinds: dict[str, ColumnKind]
    required: tuple[str, ...]
    keep_extra: bool = False
    unique: tuple[str, ...] = ()
    allowed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scales: AnswerScales | None = None
    non_negative: tuple[str, ...] = ()
    filled: dict[str, float] = field(default_factory=dict)

    @property
    def optional(self) -> tuple[str, ...]:
        """The contract columns a table may lack."""
        return tuple(c for c in self.kinds if c not in self.required)


TRANSACTIONS = TableSpec(
    name="transactions",
    kinds={
        "customer_id": "id",
        "ts": "timestamp",
        "amount": "number",
        "order_id": "id",
        "quantity": "number",
        "category": "string",
        "channel": "string",
    },
    required=("customer_id", "ts"),
    # A file of who bought when, without values (a till's visits, a date-only extract): every
    # line is a purchase of one unit, so spend counts lines and the models read timing alone.
    filled={"amount": 1.0},
)

INTERACTIONS = TableSpec(
    name="interactions",
    kinds={"customer_id": "id", "ts": "timestamp", "kind": "string", "channel": "string"},
    required=("customer_id", "ts", "kind"),
)

CUSTOMERS = TableSpec(
    name="customers",
    kinds={"customer_id": "id", "signup_ts": "timestamp"},
    required=("customer_id",),
    keep_extra=True,
    unique=("customer_id",),
)

# Answer scales of the survey kinds, whole numbers from low to high:
# - nps: "How likely is it that you would recommend [company] to a friend or colleague?", 0 (not
#   at all likely) to 10 (extremely likely); Reichheld, "The One Number You Need to Grow",
#   Harvard Business Review, December 2003.
# - csat: "How satisfied were you with ...?", 1 (very dissatisfied) to 5 (very satisfied), the
#   five-point scale of most satisfaction surveys (Farris, Bendle, Pfeifer and Reibstein,
#   "Marketing Metrics", 2nd ed., 2010, chapter 2, "Customer Satisfaction and Willingness to
#   Recommend").
# - ces: CES 2.0, "[Company] made it easy for me to handle my issue", 1 (strongly disagree) to 7
#   (strongly agree), so higher is less effort; Dixon, Toman and DeLisi, "The Effortless
#   Experience" (2013). The original five-point CES ran the other way (1 = very low effort); its
#   answers fit the range but not the meaning, so they are not to be loaded as ces.
SURVEY_SCALES: dict[str, tuple[int, int]] = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}

SURVEYS = TableSpec(
    name="surveys",
    kinds={"customer_id": "id", "ts": "timestamp", "kind": "string", "score": "number", "channel": "string"},
    required=("customer_id", "ts", "kind", "score"),
    allowed={"kind": tuple(SURVEY_SCALES)},
    scales=AnswerScales("score", "kind", SURVEY_SCALES),
)

# Who was assigned to which group of a campaign (a retention mailing, a voucher, a call), and
# when: the contact time for the treatment group, the time they would have been contacted for the
# control group. ``cost`` is the cost of the contact (0 for a control row, who is not contacted).
TREATMENT_GROUPS = ("treatment", "control")

TREATMENTS = TableSpec(
    name="treatments",
    kinds={
        "customer_id": "id",
        "ts": "timestamp",
        "campaign": "string",
        "group": "string",
        "cost": "number",
        "channel": "string",
    },
    required=("customer_id", "ts", "campaign", "group"),
    unique=("customer_id", "campaign"),
    allowed={"group": TREATMENT_GROUPS},
    non_negative=("cost",),
)

SPECS: dict[str, TableSpec] = {s.name: s for s in (TRANSACTIONS, INTERACTIONS, CUSTOMERS, SURVEYS, TREATMENTS)}


@dataclass(frozen=True)
class Problem:
    """One violation of the contract found in an input table."""

    source: str
    column: str | None
    message: str
    n_bad: int = 0
    n_rows: int = 0
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: where, what, how many rows, and a few examples."""
        where = f"{self.source}, column '{self.column}'" if self.column else self.source
        text = f"{where}: {self.message}"
        if self.n_bad:
            text += f" ({self.n_bad:,} of {self.n_rows:,} rows)"
        if self.examples:
            text += "; e.g. " + ", ".join(self.examples)
        return text


class DataValidationError(UserError, ValueError):
    """Input data breaks the contract; nothing was written. The message is one line, every
    problem numbered in it."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [p.describe() for p in self.problems]
        # One line however many problems, for the console's one-line error (numbered, since a
        # problem's own text holds "; e.g.").
        numbered = "; ".join(f"({i}) {line}" for i, line in enumerate(lines, 1))
        super().__init__(f"invalid input data, {len(lines)} problems: {numbered}" if len(lines) > 1
                         else f"invalid input data: {lines[0]}")


@dataclass
class TableReport:
    """What loading did to one table: rows read, rows dropped by each documented rule, date range."""

    source: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    first_ts: object = None
    last_ts: object = None
    columns: tuple[str, ...] = ()
    fingerprint: str = ""
    filled: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The report as plain values, for tracking."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "first_ts": str(self.first_ts) if self.first_ts is not None else None,
            "last_ts": str(self.last_ts) if self.last_ts is not None else None,
            "columns": list(self.columns),
            "fingerprint": self.fingerprint,
            "filled": dict(self.filled),
        }
