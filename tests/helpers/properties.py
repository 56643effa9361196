"""How many examples a property test draws: all of them in the whole suite (what CI runs), a quarter (at
least ten) in the inner loop, ``pytest -m "not e2e"``, where a property still runs on every change and CI
still draws the full number. ``tests/conftest.py`` sets :data:`SHARE` before the test modules are imported.
"""

from __future__ import annotations

SHARE = 1.0
INNER_LOOP_SHARE = 0.25


def examples(full: int) -> int:
    """The number of examples for a property that draws ``full`` in the whole suite."""
    return min(full, max(10, round(full * SHARE)))
