"""The evaluation's slow units (a baseline's calibrated level, a method's utility), each
resumed from its checkpoint or computed, `config.jobs` at a time in worker processes, and
checkpointed here as it finishes.

A worker opens the evaluation itself from its configuration (the same model, adapter, data and
seeds; it resumes, so the checkpoints stay) and shares no state with this process: a unit
computes the same record wherever it runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import TypeVar

from ..processes import map_in_processes
from .config import EvalConfig
from .context import EvalContext

Unit = TypeVar("Unit")


def checkpointed(
    ctx: EvalContext,
    compute: Callable[[EvalContext, Unit], dict],
    units: Mapping[str, Unit],
    *,
    desc: str,
) -> dict[str, dict]:
    """key -> record of every unit; `compute` must be a module-level function (it pickles)."""
    config, checkpoints = ctx.config, ctx.checkpoints
    records = {key: checkpoints.stored(key) for key in units}
    todo = [key for key, record in records.items() if record is None]
    work = partial(compute, ctx) if config.jobs == 1 else partial(_in_worker, compute, config)
    computed = map_in_processes(
        work, [units[key] for key in todo], jobs=config.jobs, threads=config.threads, desc=desc
    )
    for key, record in zip(todo, computed, strict=True):
        records[key] = checkpoints.store(key, record)
    return records


def _in_worker(
    compute: Callable[[EvalContext, Unit], dict], config: EvalConfig, unit: Unit
) -> dict:
    return compute(_worker_context(config), unit)


@lru_cache(maxsize=1)
def _worker_context(config: EvalConfig) -> EvalContext:
    """A worker's own context, opened once per process."""
    return EvalContext.open(config, resume=True)
