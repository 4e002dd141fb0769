"""Layers point one way: cli -> simulation -> server, client, audit -> common, and
cli -> inference -> common.

Read from the source with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

# package -> the fedshield packages it may import (besides itself)
ALLOWED = {
    "common": set(),
    "client": {"common"},
    "server": {"common"},
    "audit": {"common"},
    "inference": {"common"},
    "simulation": {"server", "client", "audit", "common"},
    "cli": {"simulation", "server", "client", "audit", "inference", "common"},
}


def fedshield_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        found.update(n.split(".")[1] for n in names if n.startswith("fedshield.") and "." in n)
    return found


def test_every_module_imports_only_the_layers_below_it():
    broken = [
        f"{path.relative_to(ROOT)} imports fedshield.{target}"
        for package, allowed in ALLOWED.items()
        for path in sorted((ROOT / package).glob("*.py"))
        for target in fedshield_imports(path) - allowed - {package}
    ]
    assert broken == []


def test_the_rule_covers_every_package_of_the_distribution():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.removeprefix("fedshield.") for p in config["tool"]["setuptools"]["packages"]}
    assert packages == set(ALLOWED)
