"""Seconds from `switchyard run manifests/quickstart.yaml` (what `make serve` runs) to a 200 from /v1/models.

Starts the command in its own process group, polls http://127.0.0.1:8000/v1/models, then stops
it with Ctrl-C and waits for it to exit. Each run first deletes the demo model's directory, so
the time includes writing it, as on a fresh machine. Run from the repository root with .venv set up:

    .venv/bin/python -m benchmarks.serve_startup [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_URL = "http://127.0.0.1:8000/v1/models"
DEMO_DIR = Path.home() / ".cache" / "switchyard" / "demo-llama"
DEADLINE_S = 300.0


def time_to_first_answer() -> float:
    """One cold start: `switchyard run` launched -> /v1/models answers 200."""
    switchyard = Path(sys.executable).parent / "switchyard"
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(switchyard), "run", "manifests/quickstart.yaml"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - started < DEADLINE_S:
            if process.poll() is not None:
                raise RuntimeError(f"switchyard run exited with {process.returncode} before answering")
            try:
                if httpx.get(MODELS_URL, timeout=2.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{MODELS_URL} did not answer within {DEADLINE_S}s")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    seconds = []
    for run in range(runs):
        seconds.append(time_to_first_answer())
        print(f"run {run + 1}: /v1/models answered {seconds[-1]:.1f}s after `switchyard run`", flush=True)
    print(f"median of {runs}: {statistics.median(seconds):.1f}s (target < 60s)")


if __name__ == "__main__":
    main()
