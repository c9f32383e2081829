"""The peer benchmark's plain parts: what each level sends, and the report of what came back.

No servers here: `benchmarks.peer_serving` runs them and hands these functions plain records, so the
table, the ratios, the target and the token check are tested with hand-made inputs.
"""

from __future__ import annotations

import dataclasses
import statistics

from benchmarks.load_generator import LoadConfig
from benchmarks.serving_metrics import LoadReport, RequestRecord

__all__ = [
    "PEER",
    "SWITCHYARD",
    "TARGET_CONCURRENCY",
    "TARGET_THROUGHPUT_RATIO",
    "LevelRun",
    "LevelSummary",
    "PeerWorkload",
    "Server",
    "Summaries",
    "format_ms",
    "format_table",
    "ratio",
    "summarize",
    "summarize_runs",
    "target_line",
    "token_agreement",
]

SWITCHYARD = "switchyard"
PEER = "transformers-serve"
TARGET_CONCURRENCY = 16
TARGET_THROUGHPUT_RATIO = 1.5


@dataclasses.dataclass(frozen=True)
class Server:
    """A server under test, as the load generator addresses it."""

    # SWITCHYARD or PEER.
    name: str
    # Base URL, e.g. http://127.0.0.1:8000.
    url: str
    # What requests put in "model": the config's model name, or the directory transformers serve is pinned to.
    model: str


@dataclasses.dataclass(frozen=True)
class PeerWorkload:
    """What each level sends; the same requests go to both servers."""

    # Words per text prompt (the demo tokenizer makes two to three tokens of a word and its space).
    input_words: int = 100
    # max_tokens of every request.
    max_tokens: int = 64
    # Requests per level: this many per request in flight, counting at least two in flight.
    prompts_per_slot: int = 4
    # Requests at every level, instead of the per-slot count; None: per slot.
    num_prompts: int | None = None
    # Base of the prompt seeds; each round and level derives its own from it.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("input_words", "max_tokens", "prompts_per_slot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")

    def num_prompts_at(self, concurrency: int) -> int:
        return self.num_prompts or self.prompts_per_slot * max(2, concurrency)

    def load_config(self, server: Server, concurrency: int, round_index: int) -> LoadConfig:
        """Round `round_index`'s requests at `concurrency` (round 0: the warm-up); the prompts depend on
        the round and the level but not on the server."""
        return LoadConfig(
            url=server.url,
            model=server.model,
            num_prompts=self.num_prompts_at(concurrency),
            input_len=self.input_words,
            output_len=self.max_tokens,
            ignore_eos=False,
            text_prompts=True,
            concurrency=concurrency,
            # Distinct for every round and level below 1000 requests in flight.
            seed=(self.seed * 1000 + round_index) * 1000 + concurrency,
        )


@dataclasses.dataclass(frozen=True)
class LevelRun:
    """One timed run of one system at one concurrency."""

    system: str
    concurrency: int
    # 1 for the first timed round.
    round_index: int
    report: LoadReport
    # In request order: the same prompts in the same order on both systems.
    records: list[RequestRecord]


@dataclasses.dataclass(frozen=True)
class LevelSummary:
    """Medians over the rounds of one system's runs at one concurrency; latencies in ms, None without samples."""

    output_tok_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    tpot_p50_ms: float | None


# system -> concurrency -> summary.
Summaries = dict[str, dict[int, LevelSummary]]


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(reports: list[LoadReport]) -> LevelSummary:
    """The medians of each metric over `reports` (non-empty), each metric on its own."""
    return LevelSummary(
        output_tok_s=statistics.median(report.output_throughput for report in reports),
        ttft_p50_ms=_median([report.ttft.median_ms for report in reports]),
        ttft_p99_ms=_median([report.ttft.p99_ms for report in reports]),
        itl_p50_ms=_median([report.itl.median_ms for report in reports]),
        itl_p99_ms=_median([report.itl.p99_ms for report in reports]),
        tpot_p50_ms=_median([report.tpot.median_ms for report in reports]),
    )


def summarize_runs(runs: list[LevelRun]) -> Summaries:
    grouped: dict[str, dict[int, list[LoadReport]]] = {}
    for run in runs:
        grouped.setdefault(run.system, {}).setdefault(run.concurrency, []).append(run.report)
    return {
        system: {level: summarize(reports) for level, reports in levels.items()} for system, levels in grouped.items()
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def format_ms(value: float | None) -> str:
    """Milliseconds to one decimal; "-" for None."""
    return "-" if value is None else f"{value:.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(summaries: Summaries) -> str:
    """A row per system and a ratio row per concurrency measured on both; latencies in ms."""
    header = f"{'conc':>4}  {'system':<20}{'out tok/s':>10}"
    header += "".join(f"{name:>10}" for name in ("TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "TPOT p50"))
    lines = [header]
    for concurrency in sorted(set(summaries.get(SWITCHYARD, {})) & set(summaries.get(PEER, {}))):
        pair = (summaries[SWITCHYARD][concurrency], summaries[PEER][concurrency])
        for system, summary in zip((SWITCHYARD, PEER), pair, strict=True):
            latencies = (summary.ttft_p50_ms, summary.ttft_p99_ms, summary.itl_p50_ms, summary.itl_p99_ms)
            row = f"{concurrency:>4}  {system:<20}{summary.output_tok_s:>10.1f}"
            lines.append(row + "".join(f"{format_ms(value):>10}" for value in (*latencies, summary.tpot_p50_ms)))
        throughput = ratio(pair[0].output_tok_s, pair[1].output_tok_s)
        ttft = ratio(pair[0].ttft_p50_ms, pair[1].ttft_p50_ms)
        lines.append(f"{'':>4}  {'switchyard / peer':<20}{_times(throughput):>10}{_times(ttft):>10}")
    return "\n".join(lines)


def target_line(summaries: Summaries) -> str:
    """Whether Switchyard's output tok/s at TARGET_CONCURRENCY is >= TARGET_THROUGHPUT_RATIO x the peer's,
    with a TTFT p50 no worse."""
    claim = (
        f"Switchyard / transformers serve output tok/s at concurrency {TARGET_CONCURRENCY} "
        f">= {TARGET_THROUGHPUT_RATIO}x, TTFT p50 no worse"
    )
    if any(TARGET_CONCURRENCY not in summaries.get(system, {}) for system in (SWITCHYARD, PEER)):
        return f"target: {claim}: not measured (concurrency {TARGET_CONCURRENCY} not in --concurrency)"
    ours, theirs = summaries[SWITCHYARD][TARGET_CONCURRENCY], summaries[PEER][TARGET_CONCURRENCY]
    throughput = ratio(ours.output_tok_s, theirs.output_tok_s)
    ttft = ratio(ours.ttft_p50_ms, theirs.ttft_p50_ms)
    is_met = throughput is not None and ttft is not None and throughput >= TARGET_THROUGHPUT_RATIO and ttft <= 1
    verdict = "met" if is_met else "NOT met"
    return f"target: {claim}: {_times(throughput)} tok/s, {_times(ttft)} TTFT p50 -> {verdict}"


def _text_chunks(record: RequestRecord) -> int:
    return 0 if record.ttft_s is None else len(record.itl_s) + 1


def token_agreement(runs: list[LevelRun], max_tokens: int) -> list[str]:
    """Whether both systems returned as many tokens for each request, and how each counted them."""
    by_level: dict[tuple[int, int], dict[str, LevelRun]] = {}
    for run in runs:
        by_level.setdefault((run.round_index, run.concurrency), {})[run.system] = run
    pairs = [
        pair
        for level in by_level.values()
        if SWITCHYARD in level and PEER in level
        for pair in zip(level[SWITCHYARD].records, level[PEER].records, strict=True)
    ]
    num_differing = sum(1 for ours, theirs in pairs if ours.output_tokens != theirs.output_tokens)
    if num_differing:
        verdict = f"DIFFER on {num_differing} of {len(pairs)} requests"
    else:
        verdict = f"equal on both systems for all {len(pairs)} requests"
    lines = [f"output tokens per request (greedy, same weights): {verdict}"]
    for system in (SWITCHYARD, PEER):
        records = [record for run in runs if run.system == system for record in run.records]
        num_full = sum(1 for record in records if record.output_tokens == max_tokens)
        num_usage = sum(1 for record in records if record.has_usage)
        chunks = statistics.median(map(_text_chunks, records)) if records else 0
        lines.append(
            f"  {system:<20}{sum(record.output_tokens for record in records)} tokens received; "
            f"{num_full}/{len(records)} requests ran to max_tokens {max_tokens}; {num_usage}/{len(records)} "
            f"counted by the stream's usage (else by text chunks); median {chunks:g} text chunks per request"
        )
    return lines
