"""`make demo`, the first thing a newcomer runs, as a newcomer runs it: a real server process
with the committed adapter and a real client process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from del_server.adapter import Adapter
from del_server.settings import DEFAULT_ADAPTER

REPO = Path(__file__).resolve().parents[2]


def bare_environment(home: Path) -> dict[str, str]:
    """A newcomer's shell; PYTHONPATH: this checkout's code, whichever one is installed."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


def test_the_demo_states_every_level_and_generates_privately_at_the_10_percent_one(tmp_path):
    demo = subprocess.run(
        [sys.executable, "-m", "del_server.tools.demo", "--prompt", "Once upon a time"],
        cwd=tmp_path,  # the default model and adapter are found from anywhere
        capture_output=True,
        text=True,
        timeout=240,
        env=bare_environment(tmp_path),
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    levels = [line for line in demo.stdout.splitlines() if "a server that tries hard" in line]
    assert len(levels) == 3
    assert any(line.lstrip().startswith("→ ≤ 10%") for line in levels)
    # Every level no better than sending nothing says so, in the demo and in the client.
    calibration = Adapter.load(DEFAULT_ADAPTER).calibration
    worse = [lv for lv in calibration if not lv.utility.better_than_nothing]
    assert demo.stdout.count("NOT better than sending nothing") == len(worse)
    level = next(lv for lv in calibration if lv.target_attack_rate == 0.1)
    warned = "del-client: warning: at level t0.10 the server measured" in demo.stderr
    assert warned == (level in worse)
    assert "--level 0.1" in demo.stdout
    assert "finish        length: 64 tokens" in demo.stderr
    # The committed adapter's particle reader read the prompt, or (with its λ) left it unused.
    assert "soft prompt   the particle reader's own prefix" in demo.stderr
    # ... as the levels said before anything was sent.
    unread = Adapter.load(DEFAULT_ADAPTER).reader.ignore_prompt.values()
    assert demo.stdout.count("prompt left unread") == sum(p > 0 for p in unread)
    assert re.search(r"reading       (one draw of the prompt's posterior|NOT USED)", demo.stderr)


def test_the_nlu_demo_states_every_level_and_classifies_each_sentence(tmp_path):
    demo = subprocess.run(
        [sys.executable, "-m", "del_server.tools.demo", "--nlu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=bare_environment(tmp_path),
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    levels = [line for line in demo.stdout.splitlines() if "a server that tries hard" in line]
    assert len(levels) >= 2
    answers = [line for line in demo.stdout.splitlines() if line in ("negative", "positive")]
    assert len(answers) == 3
    assert demo.stderr.count("labels        ") == 3
