"""The `switchyard` command: check a serve config before Serve sees it, then run it.

    switchyard check manifests/quickstart.yaml   # validate every application's args
    switchyard run manifests/quickstart.yaml     # check, then `serve run` the config

`serve run` builds applications on the Serve controller: a bad config is reported in its log and
`serve run` keeps waiting. `switchyard check` fails at once instead, naming the field, with exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deployments.config import AppConfig

__all__ = ["check_config", "main"]

BUILD_APP = "deployments.app:build_app"


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
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("check", "validate a serve config"), ("run", "validate, then `serve run` it")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config", type=Path, help="serve config YAML")
    args = parser.parse_args(argv)
    problems = check_config(args.config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if args.command == "check":
        print(f"{args.config}: ok")
        return 0
    serve = Path(sys.executable).parent / "serve"
    os.execv(serve, [str(serve), "run", str(args.config)])
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
