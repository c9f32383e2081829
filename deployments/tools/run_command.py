"""`switchyard run`: `serve run` a config on a Ray whose metrics export port is known.

`serve run` starts a local Ray when none runs, and Ray then picks a random metrics export port:
Prometheus would not know where to scrape. So this starts that Ray itself, exporting on
`--metrics-export-port` (8080 unless told), and runs Serve's own `serve run` in this process,
which uses the Ray it finds connected. A Ray already running (`ray start`, RAY_ADDRESS) is joined
as it is: its port is whatever it was started with (`ray start --metrics-export-port`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEFAULT_METRICS_EXPORT_PORT", "add_run_arguments", "serve_run"]

# Ray's documented example port, and what monitoring/prometheus/prometheus.yml scrapes.
DEFAULT_METRICS_EXPORT_PORT = 8080


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-export-port",
        type=int,
        default=DEFAULT_METRICS_EXPORT_PORT,
        help="where a Ray started here serves Prometheus metrics (default: 8080)",
    )


def serve_run(config: Path, metrics_export_port: int) -> int:
    """Join the running Ray or start one exporting metrics on `metrics_export_port`, then block in
    `serve run config` (Ctrl-C shuts the applications down, as with `serve run`)."""
    import click
    import ray
    from ray.serve.scripts import cli as serve_cli

    try:
        ray.init(address="auto", namespace="serve")
    except ConnectionError:  # no Ray running: start one with a known metrics port
        ray.init(namespace="serve", _metrics_export_port=metrics_export_port)
        print(f"switchyard: Ray metrics at http://127.0.0.1:{metrics_export_port}/metrics", flush=True)
    try:
        serve_cli.main(["run", str(config)], prog_name="serve", standalone_mode=False)
    except click.exceptions.Abort:  # a second Ctrl-C while Serve was shutting down
        return 130
    return 0
