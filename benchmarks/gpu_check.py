"""The GPU check: Switchyard's engine on one NVIDIA GPU, section by section, within a time budget.

    0. the random-weight model, Qwen2.5-0.5B's shapes (gpu_models), written for this run
    1. engine vs transformers' continuous batching, same workload and limits (gpu_throughput)
    2. batch-1 decode tok/s against the memory-bandwidth roofline (gpu_decode)
    3. continuous vs static vs request-at-a-time scheduling of a mixed-length workload (gpu_throughput)
    4. KV waste of the engine runs of sections 1 and 3 (gpu_throughput)
    5. bitsandbytes int8 and nf4 against bfloat16: weight bytes, tok/s, tokens (gpu_decode)
    6. greedy agreement with transformers on the device (gpu_agreement)
    7. CUDA graphs: not implemented, and said so (gpu_decode)
    8. sections 2 and 1 again on Qwen2.5-1.5B's shapes, if the budget still allows

Every section runs within its share of `--budget-s` (gpu_budget): one that fails prints its error
and one that overruns is stopped, and the next starts; one the budget no longer allows is skipped
with the reason. Tables print as each section ends and, with `--out DIR`, are rewritten to
DIR/gpu_check.json and DIR/gpu_check.txt after each one, so a run stopped from outside keeps them.
bfloat16 on a GPU; `--small` shrinks the model (hidden 128, 2 layers) and every workload so the
whole check runs on a CPU in a few minutes, in float32, where the engine must match transformers
exactly. Run from the repository root, usually through benchmarks/gpu_check.sh (which picks the
Python, uses the packages `--pack` carried, and limits the whole run to under 8 minutes):

    bash benchmarks/gpu_check.sh                        # on the GPU machine
    bash benchmarks/gpu_check.sh --small                # on a CPU
    .venv/bin/python -m benchmarks.gpu_check --small    # the module alone
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
import transformers

from benchmarks.gpu_agreement import hf_agreement
from benchmarks.gpu_budget import Budget, Section, SectionSkipped, run_sections
from benchmarks.gpu_context import GPU_SIZES, SMALL_SIZES, CheckContext
from benchmarks.gpu_decode import cuda_graphs, decode_roofline, quantization
from benchmarks.gpu_device import describe_device
from benchmarks.gpu_models import ModelShape
from benchmarks.gpu_tables import Column, SectionReport, Table, format_section, format_table
from benchmarks.gpu_throughput import engine_vs_transformers, kv_waste, scheduling_policies

__all__ = ["DEFAULT_BUDGET_S", "build_sections", "main", "parse_args"]

# Seconds for all sections; gpu_check.sh's time limit leaves room for startup on top.
DEFAULT_BUDGET_S = {"gpu": 390.0, "small": 150.0}
DEFAULT_MODEL_ROOT = Path(tempfile.gettempdir()) / "switchyard-gpu-check"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny model and workloads, for a CPU run")
    defaults = f"{DEFAULT_BUDGET_S['gpu']:.0f}, or {DEFAULT_BUDGET_S['small']:.0f} with --small"
    parser.add_argument("--budget-s", type=float, help=f"seconds for all sections (default: {defaults})")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if there is one")
    parser.add_argument("--out", type=Path, help="also write gpu_check.json and gpu_check.txt into this folder")
    parser.add_argument("--model-root", type=Path, default=DEFAULT_MODEL_ROOT, help="where the models are written")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    if args.device == "cpu" and not args.small:
        parser.error("no CUDA device: the full check needs one GPU; --small runs a shrunken check on the CPU")
    if args.budget_s is None:
        args.budget_s = DEFAULT_BUDGET_S["small" if args.small else "gpu"]
    return args


def build_sections(context: CheckContext) -> list[Section]:
    """The sections in order, each with its planned share of the budget (they sum to under 1)."""
    model = context.sizes.model
    section_1 = partial(engine_vs_transformers, context, shape=model, num_requests=context.sizes.num_requests)
    return [
        Section("0", "random-weight model", 0.05, partial(_model_table, context, shape=model)),
        Section("1", "engine vs transformers continuous batching", 0.18, section_1),
        Section("2", "batch-1 decode vs memory roofline", 0.08, partial(decode_roofline, context, shape=model)),
        Section("3", "continuous vs static vs request scheduling", 0.22, partial(scheduling_policies, context)),
        Section("4", "KV waste", 0.01, partial(kv_waste, context)),
        Section("5", "int8 and nf4 (bitsandbytes) vs bf16", 0.14, partial(quantization, context)),
        Section("6", "greedy agreement with transformers", 0.08, partial(hf_agreement, context)),
        Section("7", "CUDA graphs", 0.01, cuda_graphs),
        Section("8", "larger model: sections 2 and 1", 0.18, partial(_larger_model, context)),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    # The check's models have no tokenizer (prompts are token ids); the engine's note says so once per engine.
    logging.getLogger("engine.core.tokenizer").setLevel(logging.ERROR)
    context = CheckContext(
        sizes=SMALL_SIZES if args.small else GPU_SIZES,
        device=args.device,
        dtype="bfloat16" if args.device == "cuda" else "float32",
        model_root=args.model_root,
        threads=torch.get_num_threads(),
    )
    header = describe_device(args.device) | {
        "mode": "small" if args.small else "full",
        "dtype": context.dtype,
        "budget": f"{args.budget_s:.0f}s",
    }
    print(_header_line(header), flush=True)
    if args.small:
        print("small: every section runs, on a model too small for its timings to say anything", flush=True)
    reports: list[SectionReport] = []

    def on_report(report: SectionReport) -> None:
        reports.append(report)
        print(f"\n{format_section(report)}\n", flush=True)
        _release_memory()
        if args.out is not None:
            _write_outputs(args.out, header, reports)

    run_sections(build_sections(context), Budget(args.budget_s), on_report)
    print(format_table(_summary(reports)), flush=True)
    return 1 if any(report.status == "failed" for report in reports) else 0


def _model_table(context: CheckContext, tables: list[Table], shape: ModelShape) -> None:
    """Section 0: writes the model (every later section loads it) and says what it is."""
    model_dir = context.model_dir(shape)
    weight_bytes = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    table = Table(
        f"{shape.name}, {context.dtype}, at {model_dir}",
        [
            Column("hidden", "d"),
            Column("layers", "d"),
            Column("heads", "d"),
            Column("kv heads", "d"),
            Column("mlp", "d"),
            Column("vocab", ","),
            Column("file MB", ",.1f"),
        ],
    )
    table.add_row(
        shape.hidden_size,
        shape.num_layers,
        shape.num_heads,
        shape.num_kv_heads,
        shape.intermediate_size,
        shape.vocab_size,
        weight_bytes / 1e6,
    )
    table.notes.append("random weights, real shapes (tied embeddings); no tokenizer: every system takes token ids")
    tables.append(table)


def _larger_model(context: CheckContext, tables: list[Table]) -> None:
    """Section 8: the roofline first (cheaper, and where a larger model shows most), then section 1."""
    sizes = context.sizes
    if sizes.large_model is None:
        raise SectionSkipped("the small check has no larger model")
    _model_table(context, tables, shape=sizes.large_model)
    decode_roofline(context, tables, shape=sizes.large_model)
    engine_vs_transformers(context, tables, sizes.large_model, sizes.large_num_requests)


def _summary(reports: list[SectionReport]) -> Table:
    table = Table(
        "gpu check summary",
        [Column("section"), Column("title"), Column("status"), Column("seconds", ".1f"), Column("reason")],
    )
    for report in reports:
        table.add_row(report.number, report.title, report.status, report.seconds, report.reason or "-")
    return table


def _release_memory() -> None:
    """Frees what a finished section left (engines, KV pools), so the next has the device to itself."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _header_line(header: dict[str, str]) -> str:
    return "gpu check: " + ", ".join(f"{key} {value}" for key, value in header.items())


def _write_outputs(out_dir: Path, header: dict[str, str], reports: list[SectionReport]) -> None:
    """Rewritten after every section, so a run stopped from outside keeps the sections that finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {"header": header, "sections": [report.to_json() for report in reports]}
    (out_dir / "gpu_check.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    text = [_header_line(header)]
    text.extend(format_section(report) for report in reports)
    text.append(format_table(_summary(reports)))
    (out_dir / "gpu_check.txt").write_text("\n\n".join(text) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
