"""Shared pytest configuration: quiet progress bars, and ``tests/`` importable as ``helpers``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MRTL_QUIET", "1")

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
