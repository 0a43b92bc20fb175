"""What a calibrated privacy level records: one typed, validated record from training to the
manifest.

    CalibratedLevel   a target attack rate, the μ (and bits) that meets it, the δ its ε is
                      exact at, every attack's recovery at that μ (attacks.recovery.Recovery),
                      the blind guess's rate, and the text it was all measured on
      .utility        MeasuredUtility, optional: the level as served against sending nothing

train.calibrate makes them, training's evaluation adds their utility, Adapter.load reads them
from adapter.json's "calibration" (from_dict checks every field; an error names the file, the
level and the field), levels.py serves them, service.py publishes them in the manifest, and
the evaluation reads them. to_dict writes them back as they were read: adapter.json
round-trips byte for byte, numbers included (a hand-written 2 stays an int).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from del_client.parameters import MAX_BITS, MIN_BITS, is_bits, is_delta

from .attacks.recovery import Recovery


@dataclass(frozen=True)
class MeasuredUtility:
    """What a level is worth as served (its noise, and its soft prompt or head), beside the
    same metric with nothing sent (and a soft prompt or head trained for that case)."""

    metric: str  # e.g. "held-out continuation loss (nats/token)"
    value: float  # the level as served, mean over noise seeds
    nothing_sent: float
    higher_is_better: bool
    measured_on: str
    # Half-width of the 95 % interval of value − nothing_sent, paired over the windows both
    # were measured on; 0: not measured (the verdict is then the figures' plain comparison).
    margin: float = 0.0

    @property
    def better_than_nothing(self) -> bool:
        """Whether the level beats sending nothing by more than its margin: a level that
        does not costs privacy for nothing (as far as its measurement can tell)."""
        if self.higher_is_better:
            return self.value - self.margin > self.nothing_sent
        return self.value + self.margin < self.nothing_sent

    @classmethod
    def from_dict(cls, data: Any, where: str) -> MeasuredUtility:
        kinds = {"metric": str, "value": float, "nothing_sent": float}
        kinds |= {"higher_is_better": bool, "measured_on": str}
        optional = {"margin"} if isinstance(data, dict) and "margin" in data else set()
        for key, kind in {**kinds, **dict.fromkeys(optional, float)}.items():
            value = data.get(key) if isinstance(data, dict) else None
            valid = _is_finite(value) if kind is float else isinstance(value, kind)
            if not valid or (key == "margin" and value < 0):
                raise ValueError(
                    f"{where}: a level's utility needs {key} ({kind.__name__}), got {value!r}"
                )
        return cls(**{key: data[key] for key in (*kinds, *optional)})

    def to_dict(self) -> dict:
        """As stored; without a margin where none was measured."""
        stored = asdict(self)
        if not self.margin:
            del stored["margin"]
        return stored


@dataclass(frozen=True)
class CalibratedLevel:
    """The largest μ at which the strongest attack's 95 % upper bound on token recovery stays
    under `target_attack_rate` (train.calibrate), and what measured it."""

    target_attack_rate: float
    mu: float
    epsilon_token: float  # exact, one token replaced, at `delta`
    delta: float
    bits: int
    attacks: dict[str, Recovery]  # attack name -> its recovery at this μ
    strongest_attack: str  # the key in `attacks` of the highest rate
    prior_alone_rate: float  # what the strongest blind guess recovers: the floor
    measured_on: str  # the text the rates were measured on
    tokens: int
    prompts: int
    utility: MeasuredUtility | None = None  # None: not evaluated (or before utility records)

    @property
    def strongest(self) -> Recovery:
        """The strongest attack's recovery: the one the level holds against."""
        return self.attacks[self.strongest_attack]

    def with_utility(self, utility: MeasuredUtility) -> CalibratedLevel:
        return replace(self, utility=utility)

    @classmethod
    def from_dict(cls, data: Any, directory: str | Path, index: int = 0) -> CalibratedLevel:
        """Level `index` of `directory`'s adapter.json, checked field by field: a level the
        server could not publish is refused when the adapter loads, not at the first
        manifest request."""
        where = f"{Path(directory) / 'adapter.json'}: calibration[{index}]"
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not an object: {data!r}")
        missing = [key for key in _CHECKS if key not in data]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(missing)} (calibrated by an older version): "
                f"recalibrate with `del-server calibrate --out {directory}`"
            )
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{where} has unknown fields: {', '.join(unknown)}")
        for key, (valid, expected) in _CHECKS.items():
            if not valid(data[key]):
                raise ValueError(f"{where}: {key} must be {expected}, got {data[key]!r}")
        if data["strongest_attack"] not in data["attacks"]:
            raise ValueError(f"{where}: the strongest attack has no measured rate")
        attacks = {
            name: _recovery(result, f"{where}: attacks.{name}")
            for name, result in data["attacks"].items()
        }
        utility = MeasuredUtility.from_dict(data["utility"], where) if "utility" in data else None
        return cls(**{**data, "attacks": attacks, "utility": utility})

    def to_dict(self) -> dict:
        """The record as adapter.json stores it (without "utility" when there is none)."""
        record = asdict(self)
        if self.utility is None:
            del record["utility"]
        else:
            record["utility"] = self.utility.to_dict()
        return record


def _recovery(data: Any, where: str) -> Recovery:
    names = [f.name for f in fields(Recovery)]
    if not isinstance(data, dict) or sorted(data) != sorted(names):
        raise ValueError(f"{where} must have exactly the fields {', '.join(names)}, got {data!r}")
    for key in names:
        counted = key in ("tokens", "content_tokens", "prompts")
        if not (_is_count(data[key], 0) if counted else _is_number(data[key])):
            expected = "an integer >= 0" if counted else "a number"
            raise ValueError(f"{where}: {key} must be {expected}, got {data[key]!r}")
    return Recovery(**data)


def _is_number(value: Any) -> bool:
    """A JSON number; NaN too (a content rate over no content tokens is NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _is_count(value: Any, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


# Every field but utility: (valid?, what it must be), in adapter.json's order.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "target_attack_rate": (lambda v: _is_number(v) and 0 < v < 1, "a rate in (0, 1)"),
    "mu": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "epsilon_token": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "delta": (is_delta, "a number in (0, 1)"),
    "bits": (is_bits, f"an integer in {MIN_BITS}..{MAX_BITS}"),
    "attacks": (lambda v: isinstance(v, dict) and len(v) > 0, "an object of attack results"),
    "strongest_attack": (_is_str, "a string"),
    "prior_alone_rate": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "measured_on": (_is_str, "a string"),
    "tokens": (_is_count, "an integer >= 1"),
    "prompts": (_is_count, "an integer >= 1"),
}
