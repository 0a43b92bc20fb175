"""Frontier records compared: the gain read off at a bound, and the report on the committed
records."""

from __future__ import annotations

from pathlib import Path

import pytest

from del_server.eval.frontier_compare import BOUNDS, compare, gain_at_bound, gains

RECORDS = Path(__file__).resolve().parents[2] / "docs" / "eval" / "frontier"


def _report(*points: tuple[float, float, float]) -> dict:
    """(μ, 95 % bound, mixture loss) per point, nothing sent at 1.7."""
    return {
        "references": {"nothing_sent_soft_prompt": 1.7},
        "points": [
            {"mu": mu, "rate": high - 0.01, "high": high, "mixture": loss}
            for mu, high, loss in points
        ],
    }


def test_the_gain_is_interpolated_between_the_points_that_bracket_the_bound():
    report = _report((12, 0.25, 1.5), (4, 0.10, 1.7), (8, 0.15, 1.65))
    assert [mu for mu, *_ in gains(report)] == [4, 8, 12]  # by bound
    assert gain_at_bound(report, 0.15) == pytest.approx(-0.05)
    assert gain_at_bound(report, 0.20) == pytest.approx(-0.125)
    assert gain_at_bound(report, 0.125) == pytest.approx(-0.025)


def test_a_bound_outside_the_sweep_has_no_gain():
    report = _report((4, 0.10, 1.7), (8, 0.15, 1.65))
    assert gain_at_bound(report, 0.05) is None
    assert gain_at_bound(report, 0.20) is None


def test_the_committed_records_are_compared_on_one_plot(tmp_path):
    records = sorted(p.parent for p in RECORDS.glob("noise*-mixture/frontier.json"))
    named = compare(records, tmp_path)
    text = (tmp_path / "COMPARE.md").read_text()
    for name, report in named.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert row.count("→") == len(report["points"])
        assert row.count("|") == 6 + len(BOUNDS)
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_records_that_share_a_directory_name_are_told_apart_by_their_path(tmp_path, monkeypatch):
    monkeypatch.chdir(RECORDS.parents[2])
    twin = tmp_path / "elsewhere" / "noise-mixture"
    twin.mkdir(parents=True)
    (twin / "frontier.json").write_text((RECORDS / "noise-mixture" / "frontier.json").read_text())
    named = compare([RECORDS / "noise-mixture", twin], tmp_path / "out")
    assert list(named) == ["docs/eval/frontier/noise-mixture", str(twin)]
