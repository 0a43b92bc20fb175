"""eval-nlu's report: every method a row, the plot drawn, privacy columns only where a level is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from del_server.eval.classification_report import render
from del_server.levels import level_id

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "del_server" / "adapters" / "minilm-sst2"
COMMITTED = REPO / "docs" / "eval-nlu"
SERVED_RUNS = 10  # per level: docs/eval-nlu/served/SERVED.md


def _level_row(method: str, accuracy: float, mu: float, target: float) -> dict:
    return {
        "method": method,
        "accuracy": accuracy,
        "runs": [accuracy],
        "target_attack_rate": target,
        "mu": mu,
        "epsilon_token": 5.0,
        "strongest_attack": "bigram_marginal",
        "attack_rate": target / 2,
        "attack_rate_high": target * 0.8,
        "bits_per_token": 4,
    }


def test_the_report_has_a_row_per_method_and_a_plot(tmp_path):
    report = {
        "command": "del-server eval-nlu",
        "model_id": "all-MiniLM-L6-v2",
        "adapter": "del_server/adapters/minilm-sst2",
        "data": {"source": "../shared/data/sst2", "dev_sentences": 872},
        "raw_bits_per_token": 6144,
        "prior_alone_rate": 0.02,
        "seconds": 60.0,
        "rows": [
            {"method": "majority", "accuracy": 0.509, "runs": [0.509], "bits_per_token": 0},
            {"method": "clean", "accuracy": 0.85, "runs": [0.85], "bits_per_token": 6144},
            *(
                _level_row(method, 0.7 + 0.01 * i, mu, target)
                for i, method in enumerate(["del", "del + soft prompt", "gaussian"])
                for mu, target in ((5.0, 0.05), (64.0, 0.10))
            ),
        ],
    }
    render(report, tmp_path)
    text = (tmp_path / "EVAL.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("% |")]
    assert len(rows) == len(report["rows"])
    assert "| majority | — | — | — | — | — | 0 | 50.9% |" in text
    assert "| del + soft prompt | 10% | 64 | 5 | likelihood + bigram prior" in text
    assert (tmp_path / "accuracy_vs_attack.png").stat().st_size > 10_000


def test_docs_eval_nlu_describes_the_committed_adapter():
    report = json.loads((COMMITTED / "eval.json").read_text())
    digest = hashlib.sha256((ADAPTER / "adapter.safetensors").read_bytes()).hexdigest()
    assert report.get("adapter_tensors_sha256") == digest, (
        "the committed classification adapter changed since docs/eval-nlu was generated: rerun "
        "`make eval-nlu` and update the README's classification section"
    )


def test_the_served_runs_are_of_the_committed_adapters_levels():
    levels = json.loads((ADAPTER / "adapter.json").read_text())["calibration"]
    mu_by_level = {level_id(level["target_attack_rate"]): level["mu"] for level in levels}
    runs = sorted((COMMITTED / "served").glob("level-*-draw-*.json"))
    assert len(runs) == SERVED_RUNS * len(mu_by_level)
    for path in runs:
        run = json.loads(path.read_text())
        assert run["mu_token"] == pytest.approx(mu_by_level[run["level_id"]], rel=1e-12), (
            f"{path.name} was served at another adapter's level: rerun the served evaluation "
            "(docs/eval-nlu/served/SERVED.md)"
        )
        assert run["answered"] == run["attempted"]
