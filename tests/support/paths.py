"""Where the repository is, whatever folder of tests/ a module sits in."""

from __future__ import annotations

from pathlib import Path

# tests/support/paths.py -> tests/support -> tests -> the repository root
ROOT = Path(__file__).resolve().parents[2]

if not (ROOT / "pyproject.toml").is_file():  # a test reading the source would pass on nothing
    raise RuntimeError(f"{ROOT} is not the repository root: fix the depth in {__file__}")
