"""Load generator for an OpenAI-compatible server, in the manner of vLLM's benchmark_serving.

Sends `--num-prompts` streaming requests to `POST {url}/v1/completions` (or, with `--endpoint chat`,
`/v1/chat/completions`), greedy, with `ignore_eos` so every request generates exactly
`--output-len` tokens; `--no-ignore-eos` leaves that field out for servers that refuse it (a
request may then stop early at EOS). Completion prompts are `--input-len` random token ids drawn
from `--vocab-range LOW HIGH` (LOW included, HIGH excluded), so their length is exact, or with
`--text-prompts` `--input-len` random words, for servers that take only text; chat prompts are one
user message of `--input-len` random words. Everything random is drawn from `--seed`.

Arrivals: `--concurrency C` keeps at most C requests in flight, all queued at the start;
`--request-rate R` sends them as a Poisson process of R requests/s (`inf`, the default, sends all
at once), still capped by `--concurrency` when both are given.

Prints benchmark_serving's table (throughputs; mean, median and p99 of TTFT, TPOT, ITL and
end-to-end latency in ms), writes it with the config to `--json` if given, plots the TTFT and ITL
distributions to `--plot-dir`/latency_cdf.png if given (needs the `bench` extra: matplotlib), and
exits 1 if any request failed. Run from the repository root:

    .venv/bin/python -m benchmarks.load_generator --url http://127.0.0.1:8000 --model demo \\
        --num-prompts 64 --input-len 128 --output-len 64 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.serving_metrics import (
    LoadReport,
    RequestRecord,
    compute_report,
    error_body_message,
    format_report,
    read_stream,
    record_stream,
)

__all__ = [
    "ENDPOINT_PATHS",
    "LoadConfig",
    "LoadRun",
    "PlannedRequest",
    "arrival_offsets",
    "build_requests",
    "config_from_args",
    "main",
    "parse_args",
    "report_to_json",
    "run_load",
    "run_requests",
    "send_request",
]

ENDPOINT_PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# Words of the chat prompts; common short English words, most of them one token in real tokenizers.
_WORDS: tuple[str, ...] = tuple(
    "the of and to in is that it was for on are as with his they at be this from have or by one had"  # noqa: SIM905
    " not but what all were when we there can an your which their said if do will each about how up"
    " out them then she many some so these would other into has more her two like him see time could".split()
)


@dataclass(frozen=True)
class LoadConfig:
    """One load run; the CLI's options."""

    # Server base URL, e.g. http://127.0.0.1:8000; no other host is ever contacted.
    url: str
    # The `model` field of every request.
    model: str
    # Requests to send, one prompt each.
    num_prompts: int = 64
    # Prompt length: token ids for completions, words for chat and for text prompts.
    input_len: int = 128
    # max_tokens of every request; with ignore_eos, exactly the tokens generated.
    output_len: int = 64
    # Send `ignore_eos` (a vLLM extension) so requests run to max_tokens; False leaves the field out, for
    # servers that refuse it, and a request may stop early at EOS.
    ignore_eos: bool = True
    # Completions prompts as `input_len` random words instead of token ids, for servers that take only text.
    text_prompts: bool = False
    # Most requests in flight at once; None: no cap.
    concurrency: int | None = None
    # Poisson arrival rate in requests/s; math.inf sends every request at the start.
    request_rate: float = math.inf
    # Seeds the prompts and the arrival gaps, independently of each other.
    seed: int = 0
    # "completions" or "chat" (see ENDPOINT_PATHS).
    endpoint: str = "completions"
    # Prompt token ids are drawn from range(low, high); ids 0-4 are the demo tokenizer's special tokens.
    vocab_range: tuple[int, int] = (5, 500)
    # Seconds allowed for connecting and for each read; generous, as a loaded server can be slow.
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        for name in ("num_prompts", "input_len", "output_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.request_rate > 0:  # also rejects NaN
            raise ValueError(f"request_rate must be positive (inf for all at once), got {self.request_rate}")
        if self.endpoint not in ENDPOINT_PATHS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINT_PATHS)}, got {self.endpoint!r}")
        if self.text_prompts and self.endpoint != "completions":
            raise ValueError(f"text_prompts applies to completions (chat prompts are words), got {self.endpoint!r}")
        low, high = self.vocab_range
        if not 0 <= low < high:
            raise ValueError(f"vocab_range must satisfy 0 <= low < high, got {self.vocab_range}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


@dataclass(frozen=True)
class PlannedRequest:
    """One request, built before the run starts."""

    # Path under the base URL, e.g. /v1/completions.
    path: str
    # The JSON body.
    body: dict[str, object]
    # Prompt length in tokens, counted when the server reports no usage (for words: the word count).
    prompt_tokens: int


@dataclass(frozen=True)
class LoadRun:
    """Every request of one run, timed."""

    # One record per request, in the order build_requests planned them.
    records: list[RequestRecord]
    # Wall time from the first request sent to the last stream finished.
    duration_s: float


def _sampling_fields(ignore_eos: bool) -> dict[str, object]:
    """Greedy, streamed with a final usage chunk, and with `ignore_eos` exactly max_tokens long (a server
    extension, as in vLLM)."""
    fields: dict[str, object] = {"temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        fields["ignore_eos"] = True
    return fields


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(_WORDS, k=count))


def build_requests(config: LoadConfig) -> list[PlannedRequest]:
    """Every request of the run, with prompts drawn from `config.seed`."""
    rng = random.Random(f"prompts:{config.seed}")
    path = ENDPOINT_PATHS[config.endpoint]
    requests = []
    for _ in range(config.num_prompts):
        if config.endpoint == "chat":
            messages = [{"role": "user", "content": _words(rng, config.input_len)}]
            body = {"model": config.model, "messages": messages, "max_completion_tokens": config.output_len}
        else:
            if config.text_prompts:
                prompt: str | list[int] = _words(rng, config.input_len)
            else:
                prompt = [rng.randrange(*config.vocab_range) for _ in range(config.input_len)]
            body = {"model": config.model, "prompt": prompt, "max_tokens": config.output_len}
        requests.append(PlannedRequest(path, body | _sampling_fields(config.ignore_eos), config.input_len))
    return requests


def arrival_offsets(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Seconds from the start at which each request arrives: a Poisson process of `request_rate`
    requests/s (exponential gaps drawn from `seed`, the first request at 0), or all at 0 for inf."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(f"arrivals:{seed}")
    offsets, now = [], 0.0
    for _ in range(num_requests):
        offsets.append(now)
        now += rng.expovariate(request_rate)
    return offsets


async def send_request(client: httpx.AsyncClient, planned: PlannedRequest) -> RequestRecord:
    """Sends one streaming request and times it; any failure comes back as a record, not raised."""
    start = time.perf_counter()
    try:
        async with client.stream("POST", planned.path, json=planned.body) as response:
            if response.status_code != 200:
                message = error_body_message(await response.aread())
                return RequestRecord(
                    is_success=False,
                    latency_s=time.perf_counter() - start,
                    status_code=response.status_code,
                    error=f"HTTP {response.status_code}: {message}",
                )
            outcome = await read_stream(response.aiter_lines())
            return record_stream(outcome, planned.prompt_tokens, start, time.perf_counter())
    except httpx.HTTPError as exc:
        return RequestRecord(
            is_success=False, latency_s=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}"
        )


async def _send_when_free(
    client: httpx.AsyncClient, planned: PlannedRequest, semaphore: asyncio.Semaphore | None
) -> RequestRecord:
    if semaphore is None:
        return await send_request(client, planned)
    async with semaphore:
        return await send_request(client, planned)


async def _dispatch(
    client: httpx.AsyncClient, requests: list[PlannedRequest], offsets: list[float], concurrency: int | None
) -> list[RequestRecord]:
    semaphore = asyncio.Semaphore(concurrency) if concurrency is not None else None
    start = time.perf_counter()
    tasks = []
    for planned, offset in zip(requests, offsets, strict=True):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_send_when_free(client, planned, semaphore)))
    return list(await asyncio.gather(*tasks))


def _make_client(config: LoadConfig, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    max_in_flight = config.concurrency or config.num_prompts
    return httpx.AsyncClient(
        base_url=config.url,
        transport=transport,
        limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
        timeout=httpx.Timeout(config.timeout_s),
        # Only ever the given URL: no proxies from the environment, no redirects elsewhere.
        trust_env=False,
        follow_redirects=False,
    )


async def run_requests(config: LoadConfig, transport: httpx.AsyncBaseTransport | None = None) -> LoadRun:
    """Sends every request of `config` and times each; `transport` stands in for the network in tests."""
    requests = build_requests(config)
    offsets = arrival_offsets(config.num_prompts, config.request_rate, config.seed)
    async with _make_client(config, transport) as client:
        start = time.perf_counter()
        records = await _dispatch(client, requests, offsets, config.concurrency)
        duration_s = time.perf_counter() - start
    return LoadRun(records, duration_s)


async def run_load(config: LoadConfig, transport: httpx.AsyncBaseTransport | None = None) -> LoadReport:
    """Sends every request of `config` and reports on them; `transport` stands in for the network in tests."""
    run = await run_requests(config, transport)
    return compute_report(run.records, run.duration_s)


def report_to_json(config: LoadConfig, report: LoadReport) -> dict[str, object]:
    """The config and report as strict JSON values (an infinite request rate becomes "inf")."""
    config_fields = asdict(config)
    if math.isinf(config.request_rate):
        config_fields["request_rate"] = "inf"
    return {"config": config_fields, "report": asdict(report)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="the model id every request names")
    parser.add_argument("--num-prompts", type=int, default=64, help="requests to send")
    parser.add_argument("--input-len", type=int, default=128, help="prompt length: token ids, or words for chat")
    parser.add_argument("--output-len", type=int, default=64, help="tokens every request generates")
    parser.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="leave out ignore_eos, for servers that refuse it; requests may then stop early at EOS",
    )
    parser.add_argument(
        "--text-prompts", action="store_true", help="completions prompts as --input-len random words, not token ids"
    )
    parser.add_argument("--concurrency", type=int, help="most requests in flight at once (default: no cap)")
    parser.add_argument(
        "--request-rate", type=float, default=math.inf, help="Poisson arrivals, requests/s (default inf: all at once)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and arrival times")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINT_PATHS), default="completions")
    parser.add_argument(
        "--vocab-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(5, 500),
        help="prompt token ids are drawn from LOW (included) to HIGH (excluded); default 5 500",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to connect and per read")
    parser.add_argument("--json", type=Path, help="also write the config and report to this file")
    parser.add_argument("--plot-dir", type=Path, help="also plot the TTFT and ITL distributions to DIR/latency_cdf.png")
    args = parser.parse_args(argv)
    try:
        args.config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """The LoadConfig of parsed CLI options; raises ValueError on an invalid combination."""
    return LoadConfig(
        url=args.url,
        model=args.model,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        ignore_eos=args.ignore_eos,
        text_prompts=args.text_prompts,
        concurrency=args.concurrency,
        request_rate=args.request_rate,
        seed=args.seed,
        endpoint=args.endpoint,
        vocab_range=(args.vocab_range[0], args.vocab_range[1]),
        timeout_s=args.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status: 0, or 1 if any request failed."""
    args = parse_args(argv)
    config: LoadConfig = args.config
    cap = "no cap" if config.concurrency is None else f"at most {config.concurrency} in flight"
    print(
        f"{config.num_prompts} requests to {config.url}{ENDPOINT_PATHS[config.endpoint]} (model {config.model}), "
        f"{config.input_len} in / {config.output_len} out, {config.request_rate} req/s, {cap}",
        flush=True,
    )
    run = asyncio.run(run_requests(config))
    report = compute_report(run.records, run.duration_s)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report_to_json(config, report), indent=2) + "\n")
    if args.plot_dir is not None:
        print(f"wrote {_plot_latencies(config, run.records, args.plot_dir)}")
    return 1 if report.num_failed else 0


def _plot_latencies(config: LoadConfig, records: list[RequestRecord], plot_dir: Path) -> Path:
    # Imported here: matplotlib is the optional `bench` extra, needed only with --plot-dir.
    from benchmarks.plots import latency_figure, latency_samples, write_png

    cap = "no cap" if config.concurrency is None else f"concurrency {config.concurrency}"
    title = f"{config.model} at {config.url}: {config.num_prompts} requests, {cap}"
    return write_png(latency_figure(title, {config.model: latency_samples(records)}), plot_dir / "latency_cdf.png")


if __name__ == "__main__":
    sys.exit(main())
