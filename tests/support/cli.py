"""The ``fedshield`` command as tests run it."""

from __future__ import annotations

import sys

# The CLI as a subprocess, from this interpreter (no reliance on PATH).
FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]
