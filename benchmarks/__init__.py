"""Benchmark scripts that print tables; run them from the repository root (see each script's docstring)."""

__all__: list[str] = []
