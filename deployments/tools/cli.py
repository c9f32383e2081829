"""The `switchyard` command: check a serve config before Serve sees it, then run it.

    switchyard check manifests/quickstart.yaml   # validate every application's args
    switchyard run manifests/quickstart.yaml     # check, then `serve run` it (Ray metrics on port 8080)
    switchyard plan --model llama-2-70b --dtype float16 --gpu-memory-gib 80 --context-len 4096
    switchyard keys create --config manifests/tenants.yaml --tenant team-a   # an API key, shown once
    switchyard status                            # each deployed model's state, replicas, load, autoscaling
    switchyard kuberay manifests/multi-model.yaml > rayservice.yaml   # the KubeRay RayService for it

`serve run` builds applications on the Serve controller: a bad config is reported in its log and
`serve run` keeps waiting. `switchyard check` fails at once instead, naming the field, with exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deployments.config import AppConfig
from deployments.tools.keys_command import add_keys_parser, run_keys
from deployments.tools.kuberay_command import add_kuberay_parser, run_kuberay
from deployments.tools.run_command import add_run_arguments, serve_run
from deployments.tools.serve_files import BUILD_APP
from deployments.tools.status_command import add_status_parser, run_status
from engine.config import DTYPES, QUANTIZATIONS

__all__ = ["check_config", "main"]


def check_config(path: Path) -> list[str]:
    """Problems with the serve config at `path`, one line each; empty when it is valid."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        return [f"{path}: cannot read it as YAML: {error}"]
    applications = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(applications, list) or not applications:
        return [f"{path}: a serve config needs a non-empty `applications` list"]
    problems = []
    for index, application in enumerate(applications):
        where = f"{path}: applications[{index}]"
        if not isinstance(application, dict) or application.get("import_path") != BUILD_APP:
            continue  # not ours to check
        problems.extend(f"{where}.args.{problem}" for problem in _args_problems(application.get("args") or {}))
    return problems


def _args_problems(args: Any) -> list[str]:
    try:
        AppConfig.model_validate(args)
    except ValidationError as error:
        return [
            f"{'.'.join(str(part) for part in problem['loc']) or '(args)'}: {problem['msg']}"
            for problem in error.errors(include_url=False)
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "status":
        return run_status(args)
    if args.command == "kuberay":
        problems = check_config(args.config)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else run_kuberay(args)
    problems = check_config(args.config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if args.command == "check":
        print(f"{args.config}: ok")
        return 0
    return serve_run(args.config, args.metrics_export_port)


def _plan(args: argparse.Namespace) -> int:
    from deployments.tools import planner  # torch and transformers: only the plan command needs them

    try:
        dims = planner.ModelDims.from_config(planner.load_model_config(args.model))
    except (OSError, ValueError) as error:
        print(f"switchyard plan: {error}", file=sys.stderr)
        return 1
    context_len = args.context_len or dims.max_position_embeddings
    result = planner.plan(
        dims,
        dtype=args.dtype,
        quantization=args.quantization,
        gpu_memory_bytes=int(args.gpu_memory_gib * 2**30),
        memory_fraction=args.memory_fraction,
        context_len=context_len,
        concurrency=args.concurrency,
        block_size=args.block_size,
        gpus_per_node=args.gpus_per_node,
    )
    name = Path(args.model).parent.name if args.model.endswith(".json") else Path(args.model).name
    print(
        planner.render(
            name,
            result,
            dtype=args.dtype,
            quantization=args.quantization,
            context_len=context_len,
            gpus_per_node=args.gpus_per_node,
        )
    )
    return 0 if result.tensor_parallel_size is not None else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("check", "validate a serve config"), ("run", "validate, then `serve run` it")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config", type=Path, help="serve config YAML")
        if name == "run":
            add_run_arguments(command)
    plan = commands.add_parser("plan", help="memory and GPUs a model needs")
    plan.add_argument("--model", required=True, help="a well-known model's name, a config.json, or a model directory")
    plan.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    plan.add_argument("--quantization", choices=[q for q in QUANTIZATIONS if q is not None], default=None)
    plan.add_argument("--gpu-memory-gib", type=_positive_float, default=80.0, help="memory of one GPU")
    plan.add_argument("--memory-fraction", type=_fraction, default=0.9, help="share of a GPU for weights and KV cache")
    plan.add_argument("--context-len", type=int, default=None, help="tokens per sequence; default: the model's")
    plan.add_argument("--concurrency", type=int, default=1, help="full-length sequences to serve at once")
    plan.add_argument("--block-size", type=int, default=16, help="tokens per KV block, as in the engine config")
    plan.add_argument(
        "--gpus-per-node",
        type=int,
        default=8,
        help="GPUs of a node: tensor parallelism stays within one, pipeline stages may span nodes",
    )
    add_keys_parser(commands)
    add_status_parser(commands)
    add_kuberay_parser(commands)
    return parser


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
