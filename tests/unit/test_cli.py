"""`switchyard check` / `run`: a bad serve config fails at once, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.tools import cli

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.mark.parametrize(
    "manifest",
    sorted(str(path.relative_to(MANIFESTS)) for path in [*MANIFESTS.glob("*.yaml"), *MANIFESTS.glob("gpu/*.yaml")]),
)
def test_every_manifest_passes_the_check(manifest: str) -> None:
    assert cli.check_config(MANIFESTS / manifest) == []
    assert cli.main(["check", str(MANIFESTS / manifest)]) == 0


def write_config(tmp_path: Path, args: dict) -> Path:
    config = {"applications": [{"name": "x", "import_path": cli.BUILD_APP, "args": args}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_bad_field_is_named_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(
        tmp_path, {"models": [{"name": "m", "source": {"demo": "llama"}, "engine": {"block_sise": 16}}]}
    )
    assert cli.main(["check", str(path)]) == 1
    assert "applications[0].args.models.0.engine.block_sise: Extra inputs are not permitted" in capsys.readouterr().err


def test_run_does_not_start_serve_for_a_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[Path, int]] = []
    monkeypatch.setattr(cli, "serve_run", lambda config, port: started.append((config, port)) or 0)
    assert cli.main(["run", str(write_config(tmp_path, {"models": []}))]) == 1
    assert started == []
    assert cli.main(["run", str(MANIFESTS / "quickstart.yaml")]) == 0
    assert cli.main(["run", str(MANIFESTS / "quickstart.yaml"), "--metrics-export-port", "9100"]) == 0
    assert started == [(MANIFESTS / "quickstart.yaml", 8080), (MANIFESTS / "quickstart.yaml", 9100)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("applications: [", "cannot read it as YAML"), ("http_options: {}", "non-empty `applications`")],
)
def test_a_file_that_is_not_a_serve_config_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert problem in cli.check_config(path)[0]
