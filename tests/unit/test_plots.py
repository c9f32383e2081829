"""Benchmark plots: the lines drawn from plain numbers, and the PNG files written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from benchmarks.plots import (
    LatencySamples,
    concurrency_figure,
    latency_figure,
    latency_samples,
    write_png,
)
from benchmarks.serving_metrics import RequestRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, the first after the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", data[16:24])


def test_concurrency_figure_draws_a_line_per_system_in_concurrency_order_without_missing_points() -> None:
    figure = concurrency_figure("throughput", "tok/s", {"a": {16: 30.0, 1: 10.0, 4: 20.0}, "b": {1: 5.0, 4: None}})
    [axes] = figure.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
    assert lines == {"a": ([1, 4, 16], [10.0, 20.0, 30.0]), "b": ([1], [5.0])}
    assert axes.get_xscale() == "log"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["1", "4", "16"]


def test_latency_figure_draws_each_systems_cdf_and_leaves_out_empty_samples() -> None:
    samples = {"a": LatencySamples(ttft_ms=[30.0, 10.0, 20.0], itl_ms=[]), "b": LatencySamples([5.0], [1.0, 2.0])}
    ttft_axes, itl_axes = latency_figure("latency", samples).axes
    ttft_lines = {line.get_label(): line for line in ttft_axes.get_lines()}
    assert set(ttft_lines) == {"a (n=3)", "b (n=1)"}
    assert list(ttft_lines["a (n=3)"].get_xdata()) == [10.0, 20.0, 30.0]
    assert list(ttft_lines["a (n=3)"].get_ydata()) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [line.get_label() for line in itl_axes.get_lines()] == ["b (n=2)"]


def test_latency_samples_are_the_successful_records_in_milliseconds() -> None:
    records = [
        RequestRecord(True, ttft_s=0.5, itl_s=[0.01, 0.02]),
        RequestRecord(True, ttft_s=None),
        RequestRecord(False, ttft_s=9.0, itl_s=[9.0], error="HTTP 500: boom"),
    ]
    samples = latency_samples(records)
    assert samples.ttft_ms == [500.0]
    assert samples.itl_ms == pytest.approx([10.0, 20.0])


def test_write_png_creates_the_folder_and_writes_a_png_of_the_figures_size(tmp_path: Path) -> None:
    figure = concurrency_figure("throughput", "tok/s", {"a": {1: 1.0, 2: 2.0}})
    path = write_png(figure, tmp_path / "new" / "plot.png")
    assert path == tmp_path / "new" / "plot.png"
    width, height = figure.get_size_inches() * figure.dpi
    assert png_size(path) == (round(width), round(height))
    samples = {"a": LatencySamples([1.0, 2.0], [0.5])}
    assert png_size(write_png(latency_figure("latency", samples), tmp_path / "cdf.png"))[0] > 0
