"""Slow independent units spread over worker processes (del_server/processes.py): results in
the items' order, a worker's failure is the run's, each unit's bars on a line of its own."""

from __future__ import annotations

import math
import operator

import pytest

from del_server.processes import bar_line, map_in_processes


def test_units_in_worker_processes_come_back_in_the_items_order():
    roots = map_in_processes(math.sqrt, [16.0, 9.0, 4.0, 1.0], jobs=2, threads=1, desc="roots")
    assert list(roots) == [4.0, 3.0, 2.0, 1.0]


def test_a_unit_that_fails_in_a_worker_fails_the_run_with_its_own_error():
    with pytest.raises(ValueError, match="math domain error"):
        list(map_in_processes(math.sqrt, [4.0, -1.0], jobs=2, threads=1, desc="roots"))


def test_each_unit_in_a_worker_draws_its_bars_on_its_own_line_and_here_under_the_last():
    asked = [bar_line] * 3
    assert list(map_in_processes(operator.call, asked, jobs=2, threads=1, desc="lines")) == [
        1,
        2,
        3,
    ]
    assert (
        list(map_in_processes(operator.call, asked, jobs=1, threads=1, desc="lines")) == [None] * 3
    )
