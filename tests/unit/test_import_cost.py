"""The ingress never loads torch: the Router module, the serve config, `build_app` and
`switchyard check` run in a fresh interpreter without torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
from pathlib import Path
import yaml
import deployments.ingress.router
import deployments.routing.serve_router
from deployments.tools.cli import check_config
import engine
engine.EngineConfig(model="m"); engine.SamplingParams(); engine.EngineStats; engine.RequestOutput
problems = check_config(Path(sys.argv[1]))
assert problems == [], problems
from deployments.app import build_app
build_app(yaml.safe_load(Path(sys.argv[1]).read_text())["applications"][0]["args"])
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
print(",".join(heavy) or "none")
"""


def test_router_build_app_and_config_check_load_neither_torch_nor_transformers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO_ROOT / "manifests" / "quickstart.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"


def test_the_engine_facade_loads_the_engines_on_first_use() -> None:
    probe = "import sys, engine; engine.LLMEngine; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_the_cli_does_not_import_ray_before_choosing_its_auth_mode() -> None:
    """Ray reads RAY_AUTH_MODE when it is imported; `switchyard status` sets it first (from the token
    file), so nothing the CLI module imports may import Ray."""
    probe = "import sys; import deployments.tools.cli; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
