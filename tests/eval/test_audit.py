"""`del-server audit`: every level attacked again on held-out prompts its calibration never
saw, judged by the calibration's own rule, and a failing level fails the command."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from del_server.adapter import Adapter
from del_server.errors import InputError
from del_server.eval.audit import AuditError, failing, markdown, run
from del_server.eval.config import AuditConfig
from del_server.settings import DEFAULT_NLU_ADAPTER

SMALL = {"prompts": 6, "particles": 8, "prefix_steps": 10}


def del_server(*argv: str) -> subprocess.CompletedProcess:
    """`del-server ARGV` as its console script runs it."""
    return subprocess.run(
        [sys.executable, "-c", "from del_server.cli import main; main()", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def audit(small_adapter, stories260k, tinystories, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("audit")
    return run(AuditConfig(str(stories260k), str(tinystories), small_adapter, out, **SMALL))


def test_every_level_is_attacked_on_prompts_after_those_it_was_calibrated_on(audit, small_adapter):
    levels = Adapter.load(small_adapter).calibration
    assert [(e["target"], e["mu"]) for e in audit["audited"]] == [
        (level.target_attack_rate, level.mu) for level in levels
    ]
    assert audit["prompts"] == {"first": levels[0].prompts, "count": 6, "tokens": 6 * 32}
    for entry in audit["audited"]:
        assert set(entry["attacks"]) == set(AuditConfig.attacks)
        assert entry["rate"] == max(r["rate"] for r in entry["attacks"].values())
        assert entry["holds"] == (entry["high"] < entry["target"])


def test_the_report_is_written_as_json_and_a_table(audit):
    out = audit["config"]["out"]
    with open(f"{out}/audit.json") as stored:
        assert json.load(stored)["audited"] == audit["audited"]
    with open(f"{out}/AUDIT.md") as table:
        text = table.read()
    assert text.count("| 10% |") == 1
    assert text.count("| 30% |") == 1
    assert "8 particles" in text
    with open(f"{out}/audit.png", "rb") as figure:
        assert len(figure.read()) > 10_000


def test_the_table_names_the_settings_of_only_the_attacks_that_ran(audit):
    particles_only = copy.deepcopy(audit)
    for entry in particles_only["audited"]:
        entry["attacks"] = {a: entry["attacks"][a] for a in ("lm_filter", "lm_smoother")}
    text = markdown(particles_only)
    assert "8 particles" in text
    assert "trigram over" not in text
    assert f"trigram over {audit['config']['trigram_keep']}" in markdown(audit)


def test_the_table_and_figure_are_redrawn_from_the_json_alone(audit, tmp_path):
    out = Path(audit["config"]["out"])
    shutil.copy(out / "audit.json", tmp_path)
    result = del_server("audit", "--render-only", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "AUDIT.md").read_text() == (out / "AUDIT.md").read_text()
    assert (tmp_path / "audit.png").stat().st_size > 10_000


def test_candidate_mu_audited_in_worker_processes_show_recovery_grow_with_the_signal(
    small_adapter, stories260k, tinystories, tmp_path
):
    config = AuditConfig(
        str(stories260k),
        str(tinystories),
        small_adapter,
        tmp_path,
        mus=(0.05, 5000.0),
        attacks=("bigram_marginal",),
        jobs=2,
        **SMALL,
    )
    blind, clear = run(config)["audited"]
    assert blind["holds"] is None
    assert clear["holds"] is None
    assert clear["rate"] > blind["rate"] + 0.3


def test_one_level_can_be_audited_alone(small_adapter, stories260k, tinystories, tmp_path):
    config = AuditConfig(
        str(stories260k),
        str(tinystories),
        small_adapter,
        tmp_path,
        levels=(0.3,),
        attacks=("bigram_marginal",),
        **SMALL,
    )
    (only,) = run(config)["audited"]
    assert only["target"] == 0.3
    assert only["mu"] == Adapter.load(small_adapter).calibration[1].mu


def test_a_level_whose_bound_reaches_its_target_fails_the_command(
    small_adapter, stories260k, tinystories, tmp_path
):
    adapter = tmp_path / "adapter"
    shutil.copytree(small_adapter, adapter)
    description = json.loads((adapter / "adapter.json").read_text())
    description["calibration"][0]["target_attack_rate"] = 0.001  # under the blind guess
    (adapter / "adapter.json").write_text(json.dumps(description))
    argv = ["audit", "--model", str(stories260k), "--data", str(tinystories)]
    argv += ["--adapter", str(adapter), "--out", str(tmp_path / "out")]
    argv += ["--prompts", "6", "--particles", "8", "--prefix-steps", "10"]
    argv += ["--attacks", "bigram_marginal"]
    result = del_server(*argv)
    assert result.returncode == 1, result.stderr
    assert "- 0.1% level μ = " in result.stdout
    assert " FAILS" in result.stdout
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert [e["target"] for e in failing(report)] == [0.001]

    again = del_server(*argv, "--reuse")  # nothing changed: nothing attacked, the same verdict
    assert again.returncode == 1, again.stderr
    assert again.stdout.count("(an earlier audit's)") == 2


def test_reuse_attacks_only_the_levels_an_earlier_audit_did_not_measure_alike(
    small_adapter, stories260k, tinystories, tmp_path
):
    def audit(**options) -> dict:
        return run(
            AuditConfig(
                str(stories260k),
                str(tinystories),
                small_adapter,
                tmp_path,
                attacks=("bigram_marginal",),
                **SMALL | options,
            )
        )

    earlier = audit(levels=(0.3,))
    stored = json.loads((tmp_path / "audit.json").read_text())
    stored["audited"][0]["rate"] = 0.123  # a mark: only a reused row carries it
    (tmp_path / "audit.json").write_text(json.dumps(stored))

    first, second = audit(reuse=True)["audited"]
    assert second["rate"] == 0.123
    assert first["target"] == 0.1
    assert first["rate"] != 0.123
    assert (
        earlier["projection_sha256"]
        == json.loads((tmp_path / "audit.json").read_text())["projection_sha256"]
    )
    assert "earlier audit's (`--reuse`)" in (tmp_path / "AUDIT.md").read_text()

    for changed in ({"seed": 2}, {"prompts": 5}):
        (tmp_path / "audit.json").write_text(json.dumps(stored))
        assert all(e["rate"] != 0.123 for e in audit(reuse=True, **changed)["audited"])
    stored["projection_sha256"] = "another projection"
    (tmp_path / "audit.json").write_text(json.dumps(stored))
    assert all(e["rate"] != 0.123 for e in audit(reuse=True)["audited"])


def test_a_classifiers_levels_are_audited_on_its_dev_sentences_by_the_attacks_an_encoder_leaves(
    tmp_path,
):
    argv = ["audit", "--adapter", DEFAULT_NLU_ADAPTER, "--out", str(tmp_path), "--prompts", "6"]
    result = del_server(*argv, "--levels", "0.1", "--attacks", "bigram_marginal,lm_smoother")
    report = json.loads((tmp_path / "audit.json").read_text())
    assert result.returncode == (0 if report["audited"][0]["holds"] else 1), result.stderr
    assert (report["config"]["model"], Path(report["config"]["data"]).name) == (
        "all-MiniLM-L6-v2",
        "sst2",
    )
    (level,) = Adapter.load(DEFAULT_NLU_ADAPTER).calibration[1:]
    (entry,) = report["audited"]
    assert (entry["target"], entry["mu"]) == (0.1, level.mu)
    assert list(entry["attacks"]) == ["bigram_marginal"]
    assert report["config"]["attacks"] == ["bigram_marginal"]
    assert report["task"] == "sst2"
    window = level.tokens // level.prompts
    assert report["prompts"] == {"first": level.prompts, "count": 6, "tokens": 6 * window}
    assert "`sst2`'s dev sentences (tokens only)" in (tmp_path / "AUDIT.md").read_text()


def test_an_audit_that_cannot_run_says_why_before_attacking(
    shared_dir, stories260k, small_adapter, tmp_path
):
    encoder_only = AuditConfig(
        "all-MiniLM-L6-v2",
        str(shared_dir / "data" / "sst2"),
        Path(DEFAULT_NLU_ADAPTER),
        tmp_path,
        attacks=("lm_filter", "lm_smoother"),
    )
    with pytest.raises(AuditError, match="no causal LM for lm_filter, lm_smoother"):
        run(encoder_only)
    another_model = AuditConfig(
        str(stories260k), str(shared_dir / "data" / "sst2"), Path(DEFAULT_NLU_ADAPTER), tmp_path
    )
    with pytest.raises(AuditError, match="built for another model's embeddings"):
        run(another_model)
    sentences_for_stories = AuditConfig(
        str(stories260k), str(shared_dir / "data" / "sst2"), small_adapter, tmp_path
    )
    with pytest.raises(InputError, match="sst2: no text files"):
        run(sentences_for_stories)
    assert not (tmp_path / "audit.json").exists()
