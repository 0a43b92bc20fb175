"""The privacy levels a server serves, and which one (and which soft prompt) a request gets.

A level is a complete set of mechanism parameters (k, b, c, A) under a stable id:

    calibrated levels   the adapter's calibration, id "t" + target attack rate ("t0.10")
    soft-prompt levels  a soft prompt trained at a μ that no calibrated level has ("mu7.12")

A level has a soft prompt when the adapter holds one trained at exactly its μ and bits (the
training pipeline records the bits it trained at; its default, DEFAULT_BITS, when it did
not say).

A request names its level (StreamHeader.level_id), and its header must then be that level's
parameters; or it names none, and the server looks for a level with the header's k and b and
its A and c to a relative LEVEL_TOLERANCE. Nothing else gets a soft prompt: never the prompt
of another level, whose noise it was not trained for. Final says what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from del_client.codec import FrameSpec, RawSpec
from del_client.errors import FrameError
from del_client.mechanism import PrivacySpec
from del_client.parameters import DEFAULT_BITS
from del_client.proto import inference_pb2

from .adapter import Adapter
from .calibration import CalibratedLevel

LEVEL_TOLERANCE = 1e-9  # relative, on A and c: a few ULPs of any other way to compute them


@dataclass(frozen=True)
class Level:
    id: str
    mu: float
    spec: PrivacySpec  # the parameters a header carries at this level
    soft_prompt: bool  # the adapter holds a soft prompt trained at exactly (μ, bits)
    calibration: CalibratedLevel | None  # what measured it; None: a soft-prompt-only level

    def matches(self, spec: PrivacySpec) -> bool:
        mine = self.spec
        return (
            spec.dim == mine.dim
            and spec.bits == mine.bits
            and _close(spec.scale, mine.scale)
            and _close(spec.clip, mine.clip)
        )

    def describe(self) -> str:
        s = self.spec
        return f"dim={s.dim} bits={s.bits} clip={s.clip!r} scale={s.scale!r}"


def _close(value: float, reference: float) -> bool:
    return abs(value - reference) <= LEVEL_TOLERANCE * abs(reference)


def level_id(target_attack_rate: float) -> str:
    """ "t0.10" for a 10 % target: two decimals when they say it exactly, else all digits."""
    two = f"{target_attack_rate:.2f}"
    return f"t{two}" if float(two) == target_attack_rate else f"t{target_attack_rate!r}"


def adapter_levels(adapter: Adapter) -> tuple[Level, ...]:
    """Calibrated levels in calibration order (most private first), then soft-prompt levels."""
    soft_bits = adapter.metadata.get("bits", DEFAULT_BITS)  # the training pipeline's default

    def spec(mu: float, bits: int) -> PrivacySpec:
        return PrivacySpec.from_mu(mu=mu, dim=adapter.projection_dim, bits=bits, clip=adapter.clip)

    levels = [
        Level(
            id=level_id(c.target_attack_rate),
            mu=c.mu,
            spec=spec(c.mu, c.bits),
            soft_prompt=c.mu in adapter.soft_prompts and c.bits == soft_bits,
            calibration=c,
        )
        for c in adapter.calibration
    ]
    covered = {level.mu for level in levels if level.soft_prompt}
    levels += [
        Level(f"mu{mu:.6g}", mu, spec(mu, soft_bits), soft_prompt=True, calibration=None)
        for mu in sorted(adapter.soft_prompts)
        if mu not in covered
    ]
    ids = [level.id for level in levels]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the adapter's levels do not have distinct ids: {ids}")
    return tuple(levels)


@dataclass(frozen=True)
class LevelChoice:
    """The level a request is served at (None: none) and what that means for its soft prompt."""

    level: Level | None
    soft_prompt: int  # inference_pb2.SoftPrompt

    @property
    def level_id(self) -> str:
        return self.level.id if self.level is not None else ""

    @property
    def soft_prompt_mu(self) -> float | None:
        """The μ of the soft prompt to prepend (a key of Adapter.soft_prompts), or None."""
        used = self.soft_prompt == inference_pb2.SOFT_PROMPT_USED
        return self.level.mu if used and self.level is not None else None


def choose_level(levels: tuple[Level, ...], named: str, spec: FrameSpec) -> LevelChoice:
    """The level of a request whose header names `named` ("" for none) and carries `spec`;
    FrameError (INVALID_ARGUMENT) for a level that is unknown or is not what the header says."""
    if isinstance(spec, RawSpec):
        if named:
            raise FrameError(
                f"level {named!r} was named with the raw mechanism: levels are parameters of "
                "the binomial mechanism, raw frames have none"
            )
        return LevelChoice(None, inference_pb2.SOFT_PROMPT_RAW)
    if named:
        found = [level for level in levels if level.id == named]
        if not found:
            offered = ", ".join(level.id for level in levels) or "none"
            raise FrameError(f"no privacy level {named!r} on this server (offered: {offered})")
        level = found[0]
        if not level.matches(spec):
            raise FrameError(
                f"level {named!r} is {level.describe()}, but the header says dim={spec.dim} "
                f"bits={spec.bits} clip={spec.clip!r} scale={spec.scale!r} (to a relative "
                f"{LEVEL_TOLERANCE:g}): send the level's parameters from the manifest"
            )
    else:
        level = next((level for level in levels if level.matches(spec)), None)
        if level is None:
            return LevelChoice(None, inference_pb2.SOFT_PROMPT_NO_LEVEL)
    used = (
        inference_pb2.SOFT_PROMPT_USED
        if level.soft_prompt
        else inference_pb2.SOFT_PROMPT_NOT_TRAINED
    )
    return LevelChoice(level, used)
