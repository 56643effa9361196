"""`pneumoscan evaluate` sub-commands (to be filled in by the issue that owns them)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this group's sub-commands."""
