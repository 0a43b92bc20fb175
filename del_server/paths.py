"""Paths as a report records and shows them: relative to the checkout when inside it or beside
it (the `../shared` layout the README uses), so that a committed report reads the same on every
checkout and carries no one machine's directory layout."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

# Fields of the pipelines' configs that name files or directories.
PATH_FIELDS = frozenset({"model", "adapter", "data", "ood_data", "out"})


def shown(path: str | Path) -> str:
    """`path` relative to the working directory if it lies under it or its parent, else as
    given (a relative path: as given, it is already portable)."""
    if not Path(path).is_absolute():
        return str(path)
    relative = os.path.relpath(Path(path).resolve(), Path.cwd())
    if relative.startswith(os.pardir + os.sep + os.pardir) or relative == os.pardir:
        return str(path)
    return relative


def recorded(config) -> dict:
    """A dataclass config as a report records it: its paths `shown`."""
    return {
        k: shown(v) if isinstance(v, Path) or (k in PATH_FIELDS and isinstance(v, str)) else v
        for k, v in asdict(config).items()
    }
