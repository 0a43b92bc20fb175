"""`del-server eval-frontier` on a tiny sweep: every point carries its attack rate and each
kind's held-out loss (two front-ends, the posterior mixture), the report names the crossovers,
and the figure is drawn."""

from __future__ import annotations

import json
from pathlib import Path

from del_server.eval.config import FrontierConfig
from del_server.eval.frontier import ATTACKS, KINDS, crossover, run
from del_server.paths import recorded, shown
from del_server.settings import DEFAULT_ADAPTER

REPO = Path(__file__).resolve().parents[2]


def test_a_small_sweep_writes_points_crossover_and_figure(shared_dir, stories260k, tmp_path):
    config = FrontierConfig(
        model=str(stories260k),
        data=str(shared_dir / "data/tinystories/tinystories_val_head_dev.txt"),
        adapter=DEFAULT_ADAPTER,
        out=tmp_path,
        mus=(2.0, 200.0),
        steps=3,
        eval_windows=16,
        attack_prompts=8,
        particles=8,
        prefix_steps=10,
    )
    report = run(config)
    assert json.loads((tmp_path / "frontier.json").read_text())["points"] == report["points"]
    assert report["config"]["bits"] == 4  # the quantizer the committed projection was trained for
    low, high = report["points"]
    assert low["rate"] < high["rate"]  # less noise, more recovered
    for point in report["points"]:
        assert point["strongest_attack"] in ATTACKS
        for kind in KINDS:
            assert 0 < point[kind] < 10, (kind, point)
    text = (tmp_path / "FRONTIER.md").read_text()
    assert "| 200 |" in text
    crossing = [crossover(report, kind) for kind in KINDS]
    assert text.count("first beats nothing sent") == sum(c is not None for c in crossing)
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_reports_show_paths_in_and_beside_the_checkout_relative_to_it(tmp_path, monkeypatch):
    checkout = tmp_path / "main"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    assert shown(checkout / "adapters" / "stories260K") == "adapters/stories260K"
    assert shown(tmp_path / "shared" / "models") == "../shared/models"
    assert shown(tmp_path) == str(tmp_path)
    assert shown("/elsewhere/adapter") == "/elsewhere/adapter"
    # as recorded: the same wherever it is rendered
    monkeypatch.chdir(tmp_path)
    assert shown("../shared/models") == "../shared/models"


def test_reports_record_their_paths_relative_to_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = FrontierConfig(
        model="../shared/models/stories260K",
        data=str(tmp_path / "data.txt"),
        adapter=tmp_path / "adapter",
        out=tmp_path / "out",
    )
    record = recorded(config)
    assert record["model"] == "../shared/models/stories260K"
    assert record["data"] == "data.txt"
    assert record["adapter"] == "adapter"
    assert record["out"] == "out"
    assert record["bits"] == config.bits


def test_committed_reports_carry_no_machines_directory_layout():
    reports = [*REPO.glob("docs/**/*.json"), *REPO.glob("del_server/adapters/*/*.json")]
    for report in reports:
        if "checkpoints" not in report.parts:  # a run's own, never committed
            assert '"/' not in report.read_text(), report
