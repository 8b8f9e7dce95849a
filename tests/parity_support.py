"""What tests/test_parity.py uses as `ps.NAME`, gathered from the package parity/,
which owns the side-by-side harness (see parity/__init__.py). This module owns
nothing itself.
"""

from __future__ import annotations

from http_reader import Response  # noqa: F401 (the responses in an Outcome)
from parity.compare import compare, diff, log_problems, mismatch_report, mismatches  # noqa: F401
from parity.normalisations import NOT_COMPARED, readme_rows  # noqa: F401
from parity.scripts import CLOSE_WAIT, Outcome, ShutWr  # noqa: F401
from parity.servers import APP, ServerPair  # noqa: F401
