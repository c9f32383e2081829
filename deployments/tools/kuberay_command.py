"""`switchyard kuberay <serve-config.yaml>`: print the RayService manifest derived from a serve config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deployments.tools.kuberay import KubeRayOptions, ray_service

__all__ = ["add_kuberay_parser", "dump_manifest", "run_kuberay"]

_DEFAULTS = KubeRayOptions()


def add_kuberay_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = commands.add_parser("kuberay", help="a KubeRay RayService from a serve config")
    command.add_argument("config", type=Path, help="serve config YAML, as `serve run` takes it")
    command.add_argument("--name", default=_DEFAULTS.name, help="the RayService's name")
    command.add_argument("--namespace", default=_DEFAULTS.namespace)
    command.add_argument(
        "--image", default=None, help="the container image (default: the Dockerfile's tag, -gpu for CUDA models)"
    )
    command.add_argument("--gpu-type", default=None, help="GPU pods' node selector value of nvidia.com/gpu.product")
    command.add_argument("--gpus-per-node", type=int, default=_DEFAULTS.gpus_per_node)
    command.add_argument("--max-gpu-nodes", type=int, default=None, help="refuse a service needing more GPU pods")
    command.add_argument(
        "--memory-gib-per-cpu", type=float, default=_DEFAULTS.memory_gib_per_cpu, help="pods' memory per CPU, at least"
    )
    command.add_argument("--head-cpus", type=_positive_int, default=_DEFAULTS.head_cpus)
    command.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a model's dimensions, as `switchyard plan --model` takes them (a built-in name, a config.json, a "
        "model directory), where its source's config cannot be read here; repeatable",
    )
    command.add_argument("--idle-timeout-s", type=int, default=_DEFAULTS.idle_timeout_s)
    command.add_argument("--upgrade-strategy", choices=["NewCluster", "None"], default=_DEFAULTS.upgrade_strategy)
    command.add_argument("--hub-token-secret", default=_DEFAULTS.hub_token_secret, help="Secret with key `token`")
    command.add_argument("--admin-key-secret", default=_DEFAULTS.admin_key_secret, help="Secret with key `admin-key`")
    command.add_argument(
        "--store-secret", default=_DEFAULTS.store_secret, help="Secret with key `password`: the tenants store's Redis"
    )
    command.add_argument("--redis-address", default=None, help="host:port of Redis for GCS fault tolerance")
    command.add_argument("--redis-secret", default=_DEFAULTS.redis_secret, help="Secret with key `password`")
    command.add_argument("--model-volume-claim", default=None, help="a ReadWriteMany claim mounted at /models")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def run_kuberay(args: argparse.Namespace) -> int:
    pairs = [entry.partition("=")[::2] for entry in args.model_config]
    model_configs = dict(pairs)
    if any(not name or not model for name, model in pairs) or len(model_configs) < len(pairs):
        print(
            f"switchyard kuberay: --model-config takes NAME=MODEL once per model, got {args.model_config}",
            file=sys.stderr,
        )
        return 2
    options = KubeRayOptions(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        gpu_type=args.gpu_type,
        gpus_per_node=args.gpus_per_node,
        max_gpu_nodes=args.max_gpu_nodes,
        memory_gib_per_cpu=args.memory_gib_per_cpu,
        head_cpus=args.head_cpus,
        model_configs=model_configs,
        idle_timeout_s=args.idle_timeout_s,
        upgrade_strategy=args.upgrade_strategy,
        hub_token_secret=args.hub_token_secret,
        admin_key_secret=args.admin_key_secret,
        store_secret=args.store_secret,
        redis_address=args.redis_address,
        redis_secret=args.redis_secret,
        model_volume_claim=args.model_volume_claim,
    )
    try:
        manifest = ray_service(yaml.safe_load(args.config.read_text()), options)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"switchyard kuberay: {args.config}: {error}", file=sys.stderr)
        return 1
    print(dump_manifest(manifest), end="")
    return 0


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as YAML literal blocks, readable as the serve config they
    are; every value written out where it is, no anchors and aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _literal_blocks(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _literal_blocks)


def dump_manifest(manifest: dict[str, object]) -> str:
    return yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False)
