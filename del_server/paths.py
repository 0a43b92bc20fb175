"""Paths as a report shows them: relative to the checkout when inside it or beside it (the
`../shared` layout the README uses), so committed reports do not carry one machine's
directory layout."""

from __future__ import annotations

import os
from pathlib import Path


def shown(path: str | Path) -> str:
    """`path` relative to the working directory if it lies under it or its parent, else as
    given."""
    relative = os.path.relpath(Path(path).resolve(), Path.cwd())
    if relative.startswith(os.pardir + os.sep + os.pardir) or relative == os.pardir:
        return str(path)
    return relative
