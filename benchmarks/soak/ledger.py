"""The ledger of one scenario: every request sent, its outcome, and the verdict on them.

An outcome is what the client saw: a complete answer (2xx), a refusal (429 or 503, which must carry
Retry-After), another 4xx or a 5xx, a stream that ended with an error event, a connection error, a
stream the client aborted on purpose, or nothing within the scenario's bound (hung). A request is
*lost* when it was accepted (2xx headers) and then neither completed nor ended with an error the
client could act on: its stream stopped short without an error event.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Entry", "Ledger", "Outcome", "Rules", "format_ledgers"]


class Outcome(enum.Enum):
    OK = "2xx"
    RATE_LIMITED = "429"
    UNAVAILABLE = "503"
    CLIENT_ERROR = "other 4xx"
    SERVER_ERROR = "5xx"
    STREAM_ERROR = "stream errors"
    CONNECTION_ERROR = "conn errors"
    ABORTED = "aborted"
    HUNG = "hung"
    LOST = "lost"


@dataclass(frozen=True)
class Entry:
    """One request: its outcome, tokens received, and what the client noticed beyond the status."""

    outcome: Outcome
    tokens: int = 0
    # Time to the first token of an answered request, in seconds; None without one.
    ttft_s: float | None = None
    status: int | None = None
    # A 429 or 503 without Retry-After, a 4xx not in OpenAI's error shape: what was wrong.
    defect: str = ""
    # Why the request did not complete, as the client saw it (for the report's examples).
    detail: str = ""
    # The error's `code` in OpenAI's shape (e.g. "store_unavailable"), for a refusal that has one.
    code: str = ""


@dataclass(frozen=True)
class Rules:
    """What a scenario allows: outcomes that are no failure, and a bound on the p99 TTFT."""

    allowed: frozenset[Outcome]
    max_p99_ttft_s: float | None = None
    # A 5xx not in OpenAI's shape is no defect: Serve's proxy answers a plain-text 500 for a request
    # whose Router replica died before it answered, which no code of ours can shape.
    shapeless_5xx_allowed: bool = False


@dataclass
class Ledger:
    scenario: str
    entries: list[Entry] = field(default_factory=list)
    # KV blocks (and engine requests) still held once the scenario's traffic stopped.
    leaked_blocks: int = 0
    leaked_requests: int = 0
    # Other findings of the scenario (recovery not reached, memory growth...), each a failure.
    problems: list[str] = field(default_factory=list)
    # Figures the scenario measured (recovery time, memory before/after...), for the report.
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)

    def counts(self) -> Counter[Outcome]:
        return Counter(entry.outcome for entry in self.entries)

    def p99_ttft_s(self) -> float | None:
        samples = sorted(entry.ttft_s for entry in self.entries if entry.ttft_s is not None)
        if not samples:
            return None
        return samples[min(len(samples) - 1, int(0.99 * len(samples)))]

    def failures(self, rules: Rules) -> list[str]:
        """Why the scenario fails under `rules`; empty when it passes."""
        found = list(self.problems)
        if not self.entries:
            found.append("no request was sent")
        for outcome, count in sorted(self.counts().items(), key=lambda item: item[0].value):
            if outcome not in rules.allowed:
                example = next(entry.detail for entry in self.entries if entry.outcome is outcome)
                found.append(f"{count} {outcome.value} (not allowed here), e.g. {example}")
        defects = [
            entry.defect
            for entry in self.entries
            if entry.defect and not (rules.shapeless_5xx_allowed and entry.outcome is Outcome.SERVER_ERROR)
        ]
        if defects:
            found.append(f"{len(defects)} malformed answers, e.g. {defects[0]}")
        if self.leaked_blocks or self.leaked_requests:
            found.append(f"the engines still hold {self.leaked_blocks} KV blocks and {self.leaked_requests} requests")
        p99 = self.p99_ttft_s()
        if rules.max_p99_ttft_s is not None and p99 is not None and p99 > rules.max_p99_ttft_s:
            found.append(f"p99 TTFT {p99:.2f} s is above the bound {rules.max_p99_ttft_s:.2f} s")
        return found


_COLUMNS = [
    Outcome.OK,
    Outcome.RATE_LIMITED,
    Outcome.UNAVAILABLE,
    Outcome.CLIENT_ERROR,
    Outcome.SERVER_ERROR,
    Outcome.STREAM_ERROR,
    Outcome.CONNECTION_ERROR,
    Outcome.ABORTED,
    Outcome.HUNG,
    Outcome.LOST,
]


def format_ledgers(ledgers: list[tuple[Ledger, Rules]]) -> str:
    """One row per scenario: sent, each outcome, leaked blocks, p99 TTFT and the verdict."""
    header = ["scenario", "sent", *(outcome.value for outcome in _COLUMNS), "leaked blocks", "p99 TTFT s", "verdict"]
    rows = [header]
    for ledger, rules in ledgers:
        counts = ledger.counts()
        p99 = ledger.p99_ttft_s()
        rows.append(
            [
                ledger.scenario,
                str(len(ledger.entries)),
                *(str(counts[outcome]) for outcome in _COLUMNS),
                str(ledger.leaked_blocks),
                "-" if p99 is None else f"{p99:.2f}",
                "FAIL" if ledger.failures(rules) else "pass",
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)
