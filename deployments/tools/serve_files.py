"""What marks a serve config's application as ours."""

from __future__ import annotations

__all__ = ["BUILD_APP"]

# The import_path of every Switchyard application.
BUILD_APP = "deployments.app:build_app"
