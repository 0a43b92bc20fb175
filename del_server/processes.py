"""Independent slow units of work (a level attacked, a reader measured) spread over worker
processes, each unit's progress bar on a terminal line of its own.

On the default model a second torch thread gains little (reading prompts at 1,024
particles: 1.28× faster with two threads than with one); processes of one thread each keep
every core busy on their own units. Workers are spawned, not forked: torch's
thread pools do not survive a fork. A unit's result must not depend on which process ran it,
so its randomness comes from its own seeds, never from a process's state.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import torch
from tqdm import tqdm

Item = TypeVar("Item")
Result = TypeVar("Result")

_line: int | None = None  # this process's progress line while it works on a unit


def bar_line() -> int | None:
    """The terminal line a unit's progress bars go on: its own in a worker, None (under the
    last bar) in the main process."""
    return _line


def map_in_processes(
    work: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    jobs: int,
    threads: int,
    desc: str,
) -> Iterator[Result]:
    """work(item) of each item, in order, as they finish: `jobs` at a time in worker
    processes of `threads` torch threads each (in this process when jobs is 1 or there is one
    item); `work` and the items must pickle (module-level functions, partials of them)."""
    if jobs == 1 or len(items) < 2:
        yield from (work(item) for item in tqdm(items, desc=desc))
        return
    spawn = multiprocessing.get_context("spawn")
    tqdm.set_lock(spawn.RLock())
    with ProcessPoolExecutor(
        min(jobs, len(items)),
        mp_context=spawn,
        initializer=_start_worker,
        initargs=(tqdm.get_lock(), threads),
    ) as pool:
        lines = range(1, len(items) + 1)
        done = pool.map(_on_line, [work] * len(items), items, lines)
        yield from tqdm(done, total=len(items), desc=desc, position=0)


def _start_worker(lock: object, threads: int) -> None:
    tqdm.set_lock(lock)
    torch.set_num_threads(threads)


def _on_line(work: Callable[[Item], Result], item: Item, line: int) -> Result:
    global _line
    _line = line
    try:
        return work(item)
    finally:
        _line = None
