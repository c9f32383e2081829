"""Switchyard's quickstart as shipped against `transformers serve --continuous-batching`, on the same model.

Deploys the serve config (default manifests/quickstart.yaml, what `make serve` runs) exactly as written, on
a local Ray instance given the machine's real CPU count, so its CPU reservations mean what they mean under
`serve run`. Starts `transformers serve --continuous-batching` pinned to the same model directory (the
config's first model; the demo model is written on first use), in `--peer-dtype` (default auto: the
checkpoint's dtype). The client and the peer run at the Ray workers' niceness, so on a small machine
neither server is favoured and the client takes no CPU from them.

After warm-up requests to both, each of `--repeats` rounds sends, at each `--concurrency` level, the same
requests to one server and then the other (which goes first alternates by round); medians over the rounds
are reported. Requests: /v1/completions with text prompts of `--input-words` random words (transformers
serve refuses token-id prompts), greedy, `--max-tokens`, streamed with usage, and no `ignore_eos` (it
refuses that with 422), so the report checks that both returned the same number of tokens per request.
Every round and level draws fresh prompts, so no prefix cache sees one twice. A level sends
`--prompts-per-slot` x max(2, concurrency) requests, or `--num-prompts`.

Prints, per concurrency, output tok/s and TTFT, ITL and TPOT percentiles of each system with the ratios
Switchyard / transformers serve, and the target "output tok/s at concurrency 16 >= 1.5x, TTFT p50 no
worse"; writes that report and PNG plots to `--out-dir`. Needs the `bench` extra (matplotlib). Run from
the repository root:

    .venv/bin/python -m benchmarks.peer_serving                # concurrency 1,4,16,64, 3 rounds
    .venv/bin/python -m benchmarks.peer_serving --quick        # concurrency 1,16, 1 round, few requests
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import ray
import yaml
from ray import serve

from benchmarks.load_generator import LoadConfig, run_requests
from benchmarks.peer_report import (
    PEER,
    SWITCHYARD,
    TARGET_CONCURRENCY,
    LevelRun,
    PeerWorkload,
    Server,
    Summaries,
    format_ms,
    format_table,
    summarize_runs,
    target_line,
    token_agreement,
)
from benchmarks.plots import concurrency_figure, latency_figure, latency_samples, write_png
from benchmarks.serving_metrics import compute_report
from benchmarks.serving_throughput import RAY_WORKER_NICENESS
from deployments.app import build_app
from deployments.config import AppConfig, ModelConfig
from deployments.replica.llm_server import cpu_threads
from deployments.replica.model_source import resolve_model_source
from engine.hardware import auto_dtype

__all__ = ["checkpoint_dtype", "main", "parse_args", "parse_concurrency", "peer_command"]

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_LEVELS: tuple[int, ...] = (1, 4, 16, 64)
QUICK_LEVELS: tuple[int, ...] = (1, 16)
_READY_POLL_S = 0.5
_PEER_STOP_TIMEOUT_S = 10.0


def peer_command(model_dir: str, port: int, dtype: str) -> list[str]:
    """`transformers serve` from this interpreter's environment, pinned to `model_dir`."""
    transformers_cli = Path(sys.executable).with_name("transformers")
    return [
        str(transformers_cli),
        "serve",
        "--continuous-batching",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        model_dir,
    ]


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype a checkpoint's config.json names (what transformers serve's "auto" loads), or "unknown"."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return "unknown"
    config = json.loads(config_path.read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "unknown")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_peer(
    stack: contextlib.ExitStack, model_dir: str, dtype: str, log_path: Path
) -> tuple[Server, subprocess.Popen[bytes]]:
    """Starts transformers serve on a free port, in its own process group, output to `log_path`; the group
    is stopped when `stack` closes."""
    port = _free_port()
    log = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        peer_command(model_dir, port, dtype),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.callback(_stop_peer, process)
    return Server(PEER, f"http://127.0.0.1:{port}", model_dir), process


def _stop_peer(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=_PEER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_switchyard(stack: contextlib.ExitStack, app_args: dict[str, Any], model_name: str) -> Server:
    """Deploys the config on the running Ray instance, on a free port; shut down when `stack` closes."""
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    stack.callback(serve.shutdown)
    serve.run(build_app(app_args), name="peer-serving", route_prefix="/")
    return Server(SWITCHYARD, f"http://127.0.0.1:{port}", model_name)


def wait_until_ready(url: str, path: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Polls GET `url``path` until it answers 200; raises if `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=5.0, trust_env=False) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server for {url} exited with status {process.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(path).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}{path} did not answer 200 within {timeout_s:.0f} s")
            time.sleep(_READY_POLL_S)


def run_level(server: Server, config: LoadConfig, round_index: int) -> LevelRun:
    """One timed run; raises if any request failed."""
    load_run = asyncio.run(run_requests(config))
    report = compute_report(load_run.records, load_run.duration_s)
    if report.num_failed:
        raise RuntimeError(f"{server.name}: {report.num_failed} of {config.num_prompts} failed: {report.error_counts}")
    assert config.concurrency is not None  # every level caps its requests in flight
    return LevelRun(server.name, config.concurrency, round_index, report, load_run.records)


def measure(servers: tuple[Server, Server], levels: list[int], workload: PeerWorkload, repeats: int) -> list[LevelRun]:
    """Every timed run: per round, per level, both servers, the first alternating by round."""
    runs = []
    for round_index in range(1, repeats + 1):
        order = servers if round_index % 2 else servers[::-1]
        for concurrency in levels:
            for server in order:
                run = run_level(server, workload.load_config(server, concurrency, round_index), round_index)
                runs.append(run)
                print(
                    f"round {round_index} concurrency {concurrency:>3} {server.name:<20}"
                    f"{run.report.output_throughput:>8.1f} tok/s, TTFT p50 {format_ms(run.report.ttft.median_ms)} ms "
                    f"({run.report.num_completed} requests, {run.report.duration_s:.1f} s)",
                    flush=True,
                )
    return runs


def _default_torch_threads() -> int:
    import torch  # only the header needs it (writing the demo model has loaded it already)

    return torch.get_num_threads()


def describe_setup(
    model: ModelConfig, model_dir: str, peer_dtype: str, workload: PeerWorkload, repeats: int
) -> list[str]:
    """The header: what each side runs, and what every request asks for."""
    engine, actor = model.engine, model.deployment.ray_actor_options
    dtype_text = f"auto ({auto_dtype(engine.device)} here)" if engine.dtype == "auto" else engine.dtype
    peer_dtype_text = f"auto (checkpoint: {checkpoint_dtype(model_dir)})" if peer_dtype == "auto" else peer_dtype
    return [
        f"model directory {model_dir} (config model {model.name!r}); {os.cpu_count()} CPUs",
        f"  {SWITCHYARD:<20}dtype {dtype_text}, device {engine.device}, max_num_seqs {engine.max_num_seqs}, "
        f"replica num_cpus {actor.num_cpus:g} (torch threads {cpu_threads(model)}), "
        f"stream_interval_ms {model.stream_interval_ms:g}",
        f"  {PEER:<20}dtype {peer_dtype_text}, --continuous-batching, default cb-* settings, "
        f"torch threads {_default_torch_threads()} (torch's default)",
        f"requests: /v1/completions, {workload.input_words}-word text prompts, greedy, max_tokens "
        f"{workload.max_tokens}, streamed, no ignore_eos; medians of {repeats} round(s); latencies in ms",
        "ITL is the gap between stream chunks: a server that sends several tokens per chunk shows fewer, longer gaps",
    ]


def write_plots(out_dir: Path, summaries: Summaries, runs: list[LevelRun], repeats: int) -> list[Path]:
    """Throughput and TTFT p50 against concurrency, and the latency distributions at the target concurrency
    (or the highest measured)."""
    rounds = f"median of {repeats} round(s)"
    throughput = {system: {c: s.output_tok_s for c, s in levels.items()} for system, levels in summaries.items()}
    ttft = {system: {c: s.ttft_p50_ms for c, s in levels.items()} for system, levels in summaries.items()}
    levels = {run.concurrency for run in runs}
    shown = TARGET_CONCURRENCY if TARGET_CONCURRENCY in levels else max(levels)
    samples = {
        system: latency_samples(
            [record for run in runs if run.system == system and run.concurrency == shown for record in run.records]
        )
        for system in summaries
    }
    throughput_figure = concurrency_figure(f"Output throughput ({rounds})", "output tokens/s", throughput)
    ttft_figure = concurrency_figure(f"TTFT p50 ({rounds})", "TTFT p50 (ms)", ttft)
    distributions = latency_figure(f"Latency distributions at concurrency {shown}, all rounds", samples)
    return [
        write_png(throughput_figure, out_dir / "peer_throughput.png"),
        write_png(ttft_figure, out_dir / "peer_ttft_p50.png"),
        write_png(distributions, out_dir / f"peer_latency_cdf_c{shown}.png"),
    ]


def parse_concurrency(text: str) -> list[int]:
    """Comma-separated levels, e.g. "16,1,4" -> [1, 4, 16]: positive, distinct, in ascending order."""
    try:
        levels = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if levels[0] < 1:
        raise argparse.ArgumentTypeError(f"every concurrency must be >= 1, got {text!r}")
    return levels


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "manifests" / "quickstart.yaml")
    parser.add_argument("--concurrency", type=parse_concurrency, help="levels, e.g. 1,4,16,64 (the default)")
    parser.add_argument("--repeats", type=_positive_int, help="rounds; medians are reported (default 3)")
    parser.add_argument(
        "--prompts-per-slot", type=_positive_int, help="requests per level per request in flight (default 4)"
    )
    parser.add_argument("--num-prompts", type=_positive_int, help="requests at every level, instead of per slot")
    parser.add_argument("--input-words", type=_positive_int, default=100, help="words per text prompt")
    parser.add_argument("--max-tokens", type=_positive_int, default=64, help="max_tokens of every request")
    parser.add_argument("--warmup-prompts", type=_positive_int, default=8, help="untimed requests to each server")
    parser.add_argument(
        "--peer-dtype", default="auto", help="transformers serve --dtype (default auto: the checkpoint's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds each server has to start")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 1,16, one round, 2 requests per slot (options given win)"
    )
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or list(QUICK_LEVELS if args.quick else FULL_LEVELS)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.workload = PeerWorkload(
        input_words=args.input_words,
        max_tokens=args.max_tokens,
        prompts_per_slot=args.prompts_per_slot or (2 if args.quick else 4),
        num_prompts=args.num_prompts,
        seed=args.seed,
    )
    return args


def _app_args(config_path: Path) -> dict[str, Any]:
    config = yaml.safe_load(config_path.read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: the peer and Ray are stopped


def _warm_up(servers: tuple[Server, Server], workload: PeerWorkload, num_prompts: int) -> None:
    for server in servers:
        config = workload.load_config(server, concurrency=num_prompts, round_index=0)
        run_level(server, dataclasses.replace(config, num_prompts=num_prompts), round_index=0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workload: PeerWorkload = args.workload
    app_args = _app_args(args.config)
    model = AppConfig.model_validate(app_args).models[0]
    model_dir = resolve_model_source(model.source)
    setup = describe_setup(model, model_dir, args.peer_dtype, workload, args.repeats)
    print("\n".join(setup), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with contextlib.ExitStack() as stack:
        # The machine's real CPUs, so the config's num_cpus reserve what they would under `serve run`.
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        # The client, and the peer started below, run at the Ray workers' priority: on a small machine a
        # client at nice 0 takes its CPU from the servers first, and a peer at nice 0 would outrank the replica.
        os.nice(RAY_WORKER_NICENESS - os.nice(0))
        peer, peer_process = start_peer(stack, model_dir, args.peer_dtype, args.out_dir / "transformers_serve.log")
        switchyard = start_switchyard(stack, app_args, model.name)
        wait_until_ready(switchyard.url, "/v1/models", args.ready_timeout)
        wait_until_ready(peer.url, "/health", args.ready_timeout, peer_process)
        servers = (switchyard, peer)
        _warm_up(servers, workload, args.warmup_prompts)
        runs = measure(servers, args.concurrency, workload, args.repeats)
    summaries = summarize_runs(runs)
    report = "\n".join([*setup, "", format_table(summaries), "", *token_agreement(runs, workload.max_tokens)])
    report += f"\n\n{target_line(summaries)}"
    print(f"\n{report}")
    (args.out_dir / "peer_serving.txt").write_text(report + "\n")
    for path in write_plots(args.out_dir, summaries, runs, args.repeats):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
