"""What loading the Router costs a Router replica's process: import seconds, peak resident memory,
and whether torch came along. Each figure is the median of `--runs` fresh interpreters.

The Router replica imports its deployment's module when it starts; it holds no model, so
anything heavy it imports is pure start-up cost. `--repo` is the checkout the interpreters import
from and `--module` the Router's module there (so the same script measures another checkout, e.g.
`deployments.router` before the ingress moved to a folder):

    .venv/bin/python benchmarks/router_footprint.py
    .venv/bin/python benchmarks/router_footprint.py --repo /path/to/other/checkout --module deployments.router
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import importlib, json, resource, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "torch": "torch" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout to import from")
    parser.add_argument("--module", default="deployments.ingress.router", help="the Router's module")
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters; the table shows medians")
    parser.add_argument("--label", default="this checkout", help="the row's name")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        # Run in the checkout, so `-c` imports its packages first.
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, args.module], cwd=args.repo, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(result.stdout))
    seconds = statistics.median(run["seconds"] for run in runs)
    peak_mib = statistics.median(run["peak_mib"] for run in runs)
    print(f"{'checkout':<16} {'module':<28} {'import s':>8} {'peak RSS MiB':>12} {'torch':>5}")
    print(f"{args.label:<16} {args.module:<28} {seconds:>8.2f} {peak_mib:>12.0f} {str(runs[0]['torch']):>5}")


if __name__ == "__main__":
    main()
