"""The GPU check's clock and loop: one budget for the whole run, a time limit per section, and
each section's outcome whatever happens in it.

Each section plans a share of the budget. A section may run for what is left less what the
sections after it plan, so time one saves flows to the next and one that overruns is stopped
(`SectionTimeout`) before it eats theirs; a section left under half its plan is skipped with the
reason printed. A section that fails is reported with its error and the next one starts.
Torch-free: tested with a hand-made clock and sections that fail on purpose.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from benchmarks.gpu_tables import SectionReport, SectionStatus, Table

__all__ = [
    "Budget",
    "Section",
    "SectionSkipped",
    "SectionTimeout",
    "run_section",
    "run_sections",
    "section_allowance_s",
    "skip_reason",
    "time_limit",
]

# Longest error message kept in a report (the whole traceback is printed).
_MAX_REASON_CHARS = 300


class SectionTimeout(BaseException):
    """A section ran past its allowance; raised into it by `time_limit`. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (ours or a library's) swallows it."""


class SectionSkipped(Exception):
    """A section cannot run here (no GPU, a package missing); its message is the reason."""


@dataclass
class Budget:
    """Seconds for the whole check, counted from construction on `clock`."""

    total_s: float
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.total_s > 0:
            raise ValueError(f"total_s must be > 0, got {self.total_s}")
        self.start = self.clock()

    def spent_s(self) -> float:
        return self.clock() - self.start

    def remaining_s(self) -> float:
        return self.total_s - self.spent_s()


def section_allowance_s(remaining_s: float, planned_later_s: float) -> float:
    """Seconds a section may run: what is left, less what the sections after it plan to take."""
    return remaining_s - planned_later_s


def skip_reason(allowance_s: float, planned_s: float) -> str | None:
    """Why a section with `allowance_s` seconds for a plan of `planned_s` does not start, or None."""
    if allowance_s >= planned_s / 2:
        return None
    return f"budget spent: {max(allowance_s, 0.0):.0f}s left for it, it plans {planned_s:.0f}s (starts on half)"


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises `SectionTimeout` in the body once `seconds` have passed (SIGALRM: main thread only).

    The signal lands between Python bytecodes, so a long native call (one CUDA kernel, one
    matmul) finishes first; waits on locks and queues are interrupted."""

    def expire(signum: int, frame: object) -> None:
        raise SectionTimeout(f"stopped at its {seconds:.0f}s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Section:
    number: str
    title: str
    # Share of the whole budget the section plans to take.
    share: float
    # Fills the tables it is given, row by row, so a failure keeps what came before it.
    run: Callable[[list[Table]], None]


def run_section(section: Section, allowance_s: float, planned_s: float) -> SectionReport:
    """Runs the section within `allowance_s`; any failure, skip or timeout becomes its report."""
    reason = skip_reason(allowance_s, planned_s)
    if reason is not None:
        return SectionReport(section.number, section.title, "skipped", 0.0, [], reason)
    tables: list[Table] = []
    status: SectionStatus = "ok"
    reason = ""
    start = time.perf_counter()
    try:
        with time_limit(allowance_s):
            section.run(tables)
    except SectionSkipped as error:
        status, reason = "skipped", str(error)
    except SectionTimeout as error:
        status, reason = "timed out", str(error)
    except Exception as error:  # noqa: BLE001 - the check reports every failure and goes on
        print(traceback.format_exc(), flush=True)
        status, reason = "failed", f"{type(error).__name__}: {error}"[:_MAX_REASON_CHARS]
    return SectionReport(section.number, section.title, status, time.perf_counter() - start, tables, reason)


def run_sections(
    sections: list[Section], budget: Budget, on_report: Callable[[SectionReport], None]
) -> list[SectionReport]:
    """Runs every section in order, each within its allowance; `on_report` sees each report as it comes."""
    reports: list[SectionReport] = []
    for index, section in enumerate(sections):
        planned_later_s = sum(later.share for later in sections[index + 1 :]) * budget.total_s
        allowance_s = section_allowance_s(budget.remaining_s(), planned_later_s)
        report = run_section(section, allowance_s, section.share * budget.total_s)
        on_report(report)
        reports.append(report)
    return reports
