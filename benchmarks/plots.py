"""PNG plots of serving benchmarks, drawn from plain numbers (matplotlib: the `bench` extra).

    concurrency_figure   one metric against concurrency, a line per system
    latency_figure       empirical CDFs of TTFT (left) and ITL (right), a line per system
    write_png            saves a figure

Figures are built with matplotlib's object API, not pyplot: no global state, no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from benchmarks.serving_metrics import RequestRecord

__all__ = ["LatencySamples", "concurrency_figure", "latency_figure", "latency_samples", "write_png"]

_DPI = 100


@dataclass(frozen=True)
class LatencySamples:
    """One system's latencies, in milliseconds."""

    # Time to first token of each successful request.
    ttft_ms: list[float]
    # Gaps between successive text chunks, pooled over the successful requests.
    itl_ms: list[float]


def latency_samples(records: list[RequestRecord]) -> LatencySamples:
    """The TTFTs and ITLs of the successful records, as compute_report counts them."""
    done = [record for record in records if record.is_success]
    return LatencySamples(
        ttft_ms=[record.ttft_s * 1000 for record in done if record.ttft_s is not None],
        itl_ms=[gap * 1000 for record in done for gap in record.itl_s],
    )


def concurrency_figure(title: str, y_label: str, series: Mapping[str, Mapping[int, float | None]]) -> Figure:
    """`series` maps system -> concurrency -> value (None: not measured, left out); log2 concurrency axis."""
    figure = Figure(figsize=(6.4, 4.2), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    for label, values in series.items():
        points = sorted((concurrency, value) for concurrency, value in values.items() if value is not None)
        axes.plot([point[0] for point in points], [point[1] for point in points], marker="o", label=label)
    concurrencies = sorted({concurrency for values in series.values() for concurrency in values})
    axes.set_xscale("log", base=2)
    axes.set_xticks(concurrencies, [str(concurrency) for concurrency in concurrencies], minor=False)
    axes.set(title=title, xlabel="concurrency (requests in flight)", ylabel=y_label)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def latency_figure(title: str, samples: dict[str, LatencySamples]) -> Figure:
    """Empirical CDFs of each system's TTFT and ITL on log axes; a system without samples of one is left out there."""
    figure = Figure(figsize=(10, 4.2), dpi=_DPI, layout="constrained")
    figure.suptitle(title)
    ttft_axes, itl_axes = figure.subplots(1, 2)
    _plot_cdfs(ttft_axes, "time to first token (ms)", {label: system.ttft_ms for label, system in samples.items()})
    itls = {label: system.itl_ms for label, system in samples.items()}
    _plot_cdfs(itl_axes, "inter-token latency: gap between stream chunks (ms)", itls)
    return figure


def _plot_cdfs(axes: Axes, x_label: str, values_by_label: dict[str, list[float]]) -> None:
    for label, values in values_by_label.items():
        if values:
            ordered = sorted(values)
            fractions = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
            axes.step(ordered, fractions, where="post", label=f"{label} (n={len(ordered)})")
    axes.set_xscale("log")
    axes.set(xlabel=x_label, ylabel="fraction of samples", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    if axes.get_lines():
        axes.legend(loc="lower right")


def write_png(figure: Figure, path: Path) -> Path:
    """Saves `figure` as a PNG at `path` (its folder is created) and returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi="figure")
    return path
