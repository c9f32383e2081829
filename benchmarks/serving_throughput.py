"""What the serving path costs: the engine offline vs the same engine behind Serve and HTTP.

Deploys a serve config (default: manifests/quickstart.yaml, what `make serve` runs) on a local Ray
instance, then measures, round-robin for `--repeats` rounds, medians reported:

    offline-engine   LLMEngine.generate in a Ray actor with the replica's resources, batch cap =
                     --concurrency, on the same token-id prompts
    http-concurrent  the load generator over HTTP, --concurrency requests in flight
    http-16-at-once  16 requests sent together          } batching through the serving path:
    http-16-serial   the same 16, one after another      } the second takes >= 3x the first
    ttft-offline     time to first token of one --input-len prompt on the idle offline engine
    ttft-http        the same over HTTP, one request at a time (its TTFT p50 over 8 requests)

Every request is greedy with ignore_eos, so each generates exactly --output-len tokens.

    .venv/bin/python -m benchmarks.serving_throughput [--repeats 3] [--num-prompts 64]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import math
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve

from benchmarks.load_generator import LoadConfig, build_requests, run_load
from deployments.app import build_app
from deployments.config import AppConfig, ModelConfig
from deployments.replica.llm_server import cpu_threads
from deployments.replica.model_source import resolve_model_source

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_BATCHING_REQUESTS = 16
NUM_TTFT_REQUESTS = 8
# Ray starts its worker processes (replicas, the proxy, actors) at this niceness.
RAY_WORKER_NICENESS = 15


@dataclasses.dataclass
class Measurement:
    seconds: float
    output_tokens: int
    ttft_p50_ms: float | None = None
    tpot_p50_ms: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


@ray.remote
class OfflineEngine:
    """The replica's engine, without Serve or HTTP, in a process with the replica's resources."""

    def __init__(self, model: ModelConfig, max_num_seqs: int) -> None:
        import torch

        from engine import LLMEngine

        torch.set_num_threads(cpu_threads(model))  # as LLMServer does
        engine_config = model.engine.to_engine_config(resolve_model_source(model.source))
        self.engine = LLMEngine(dataclasses.replace(engine_config, max_num_seqs=max_num_seqs))

    def first_token_seconds(self, prompts: list[list[int]]) -> list[float]:
        """Seconds from add_request to the first token of each prompt, one at a time on the idle engine."""
        from engine import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        seconds = []
        for index, prompt in enumerate(prompts):
            started = time.perf_counter()
            self.engine.add_request(f"ttft-{index}", prompt, params)
            while not any(output.token_ids for output in self.engine.step()):
                pass
            seconds.append(time.perf_counter() - started)
        return seconds

    def run(self, prompts: list[list[int]], max_tokens: int) -> tuple[float, int]:
        from engine import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        outputs = self.engine.generate(prompts, params)
        return time.perf_counter() - started, sum(len(output.token_ids) for output in outputs)


def main() -> None:
    args = _parse_args()
    app_args = _app_args(args.config)
    if args.stream_interval_ms is not None:
        app_args["models"][0]["stream_interval_ms"] = args.stream_interval_ms
    model = AppConfig.model_validate(app_args).models[0]
    # Logical CPUs for the offline engine's actor on top of the machine's own, so it can be
    # scheduled beside the idle replica; the two are never measured at the same time.
    offline_cpus = model.deployment.ray_actor_options.num_cpus
    ray.init(num_cpus=(os.cpu_count() or 1) + math.ceil(offline_cpus), include_dashboard=False, log_to_driver=False)
    # The client runs at the Ray workers' priority, not above the server it measures: on a small
    # machine, a client at nice 0 takes its CPU from the engine first.
    os.nice(RAY_WORKER_NICENESS - os.nice(0))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"

    load = LoadConfig(
        url=url,
        model=model.name,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    prompts = [request.body["prompt"] for request in build_requests(load)]
    offline = OfflineEngine.options(**model.deployment.ray_actor_options.to_ray()).remote(model, args.concurrency)
    batching = dataclasses.replace(load, num_prompts=NUM_BATCHING_REQUESTS)
    systems = {
        "offline-engine": lambda: _offline(offline, prompts, args.output_len),
        "http-concurrent": lambda: _http(load),
        "http-16-at-once": lambda: _http(dataclasses.replace(batching, concurrency=NUM_BATCHING_REQUESTS)),
        "http-16-serial": lambda: _http(dataclasses.replace(batching, concurrency=1)),
        "ttft-offline": lambda: _offline_ttft(offline, prompts[:NUM_TTFT_REQUESTS]),
        "ttft-http": lambda: _http(dataclasses.replace(load, num_prompts=NUM_TTFT_REQUESTS, concurrency=1)),
    }
    _http(dataclasses.replace(load, num_prompts=4))  # warm-up: first-request costs stay out of the table
    _offline(offline, prompts[:4], 8)
    runs: dict[str, list[Measurement]] = {name: [] for name in systems}
    for round_index in range(args.repeats):
        for name, measure in systems.items():
            runs[name].append(measure())
            print(f"round {round_index + 1} {name}: {runs[name][-1].tokens_per_s:.1f} tok/s", flush=True)
    _print_table(args, model, runs)
    serve.shutdown()
    ray.shutdown()


def _offline(actor: Any, prompts: list[list[int]], max_tokens: int) -> Measurement:
    seconds, output_tokens = ray.get(actor.run.remote(prompts, max_tokens))
    return Measurement(seconds, output_tokens)


def _offline_ttft(actor: Any, prompts: list[list[int]]) -> Measurement:
    seconds = ray.get(actor.first_token_seconds.remote(prompts))
    return Measurement(sum(seconds), len(seconds), ttft_p50_ms=statistics.median(seconds) * 1000)


def _http(config: LoadConfig) -> Measurement:
    report = asyncio.run(run_load(config))
    if report.num_failed:
        raise RuntimeError(f"{report.num_failed} requests failed: {report.error_counts}")
    return Measurement(report.duration_s, report.total_output_tokens, report.ttft.median_ms, report.tpot.median_ms)


def _print_table(args: argparse.Namespace, model: ModelConfig, runs: dict[str, list[Measurement]]) -> None:
    def median(name: str, field: str) -> float:
        values = [getattr(run, field) for run in runs[name] if getattr(run, field) is not None]
        return statistics.median(values) if values else float("nan")

    print(
        f"\nmodel {model.name} ({model.source.demo or model.source.path or model.source.hub_id}), "
        f"prompt {args.input_len} tok, output {args.output_len} tok, greedy, ignore_eos; "
        f"replica num_cpus {model.deployment.ray_actor_options.num_cpus}; stream_interval_ms "
        f"{args.stream_interval_ms if args.stream_interval_ms is not None else model.stream_interval_ms}; "
        f"medians of {args.repeats} runs"
    )
    print(
        f"{'system':<18}{'requests':>9}{'conc':>6}{'out tok':>9}{'wall s':>9}{'tok/s':>9}"
        f"{'TTFT p50':>10}{'TPOT p50':>10}"
    )
    shape = {
        "offline-engine": (args.num_prompts, args.concurrency),
        "http-concurrent": (args.num_prompts, args.concurrency),
        "http-16-at-once": (NUM_BATCHING_REQUESTS, NUM_BATCHING_REQUESTS),
        "http-16-serial": (NUM_BATCHING_REQUESTS, 1),
        "ttft-offline": (NUM_TTFT_REQUESTS, 1),
        "ttft-http": (NUM_TTFT_REQUESTS, 1),
    }
    for name in runs:
        requests, concurrency = shape[name]
        ttft, tpot = median(name, "ttft_p50_ms"), median(name, "tpot_p50_ms")
        print(
            f"{name:<18}{requests:>9}{concurrency:>6}{int(median(name, 'output_tokens')):>9}"
            f"{median(name, 'seconds'):>9.2f}{median(name, 'tokens_per_s'):>9.1f}"
            f"{'-' if math.isnan(ttft) else f'{ttft:.0f} ms':>10}{'-' if math.isnan(tpot) else f'{tpot:.1f} ms':>10}"
        )
    http_share = median("http-concurrent", "tokens_per_s") / median("offline-engine", "tokens_per_s")
    speedup = median("http-16-serial", "seconds") / median("http-16-at-once", "seconds")
    ttft_ratio = median("ttft-http", "ttft_p50_ms") / median("ttft-offline", "ttft_p50_ms")
    print("\ntargets")
    print(
        f"  HTTP tok/s at concurrency {args.concurrency} / offline engine   >= 0.90   {http_share:.2f}  "
        f"{'met' if http_share >= 0.9 else 'NOT met'}"
    )
    print(
        f"  TTFT p50 at concurrency 1, HTTP / offline       <= 1.50x  {ttft_ratio:.2f}x "
        f"{'met' if ttft_ratio <= 1.5 else 'NOT met'}"
    )
    print(
        f"  16 serial wall / 16 at once wall                 >= 3.00x  {speedup:.2f}x "
        f"{'met' if speedup >= 3 else 'NOT met'}"
    )


def _app_args(config_path: Path) -> dict[str, Any]:
    config = yaml.safe_load(config_path.read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "manifests" / "quickstart.yaml")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream-interval-ms", type=float, default=None, help="override the model's setting")
    return parser.parse_args()


if __name__ == "__main__":
    main()
