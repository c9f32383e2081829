"""The GPU check's output: tables of raw values, formatted for the terminal and kept for JSON.

A section fills its tables row by row as it measures, so whatever it measured before a failure
or its time limit still prints. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Cell",
    "Column",
    "SectionReport",
    "SectionStatus",
    "Table",
    "format_cell",
    "format_section",
    "format_table",
]

Cell = str | int | float | None
SectionStatus = Literal["ok", "failed", "timed out", "skipped"]


@dataclass(frozen=True)
class Column:
    name: str
    # A format spec for numbers (".1f", ",", ".1%"), right-aligned; "" for a text column, left-aligned.
    spec: str = ""


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    # Lines printed under the table: where a number comes from, what a row leaves out.
    notes: list[str] = field(default_factory=list)

    def add_row(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {self.title!r} needs {len(self.columns)} cells, got {len(cells)}")
        self.rows.append(list(cells))


@dataclass
class SectionReport:
    """One section's outcome: its tables (filled as far as it got) and why it stopped, if it did."""

    number: str
    title: str
    status: SectionStatus
    seconds: float
    tables: list[Table]
    # The error, the time limit or the skip reason; empty when status is "ok".
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def format_cell(value: Cell, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_table(table: Table) -> str:
    """The title, a header, a rule and one line per row; columns with a number spec right-aligned."""
    columns = table.columns
    texts = [[format_cell(value, column.spec) for value, column in zip(row, columns)] for row in table.rows]
    widths = [max([len(column.name), *(len(row[index]) for row in texts)]) for index, column in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if column.spec else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns)
        ]
        return "  ".join(padded).rstrip()

    header = line([column.name for column in table.columns])
    lines = [table.title, header, "-" * len(header), *(line(row) for row in texts)]
    lines.extend(f"  {note}" for note in table.notes)
    return "\n".join(lines)


def format_section(report: SectionReport) -> str:
    """The section's heading with its status and time, then its tables."""
    reason = f": {report.reason}" if report.reason else ""
    heading = f"== {report.number}. {report.title} [{report.status}, {report.seconds:.1f}s{reason}]"
    return "\n\n".join([heading, *(format_table(table) for table in report.tables)])
