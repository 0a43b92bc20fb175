"""Value types for del-server's command lines and its tools': argparse refuses a bad value in
one line that names the flag, before any model loads. (Unchecked, a training run took
`--bits 9` or `--targets 1.5` and failed minutes in, after its projection stage, or with a
traceback.)"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from del_client.parameters import MAX_BITS, MIN_BITS, SUPPORTED_BITS


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def count(text: str) -> int:
    return _whole(text, 0)


def bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in SUPPORTED_BITS:
        raise argparse.ArgumentTypeError(
            f"expected bits per coordinate in {MIN_BITS}..{MAX_BITS}, got {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def positive_floats(text: str) -> tuple[float, ...]:
    """Comma-separated μ (or other scales), each finite and > 0."""
    try:
        values = tuple(positive_float(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"comma-separated finite numbers > 0, got {text!r}")
    return values


def rates(text: str) -> tuple[float, ...]:
    """Comma-separated attack rates (targets), each strictly between 0 and 1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated rates in (0, 1), got {text!r}")
    return values


def existing_path(text: str) -> str:
    """A file or directory read late in a long run (eval's --ood-data): checked at once."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text!r}")
    return text
