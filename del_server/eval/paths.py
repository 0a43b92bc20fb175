"""Paths as a report shows them: relative to the checkout when inside it, so committed
reports do not carry one machine's directory layout."""

from __future__ import annotations

from pathlib import Path


def shown(path: str | Path) -> str:
    """`path` relative to the working directory if it lies under it, else as given."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
