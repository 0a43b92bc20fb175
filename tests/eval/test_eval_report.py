"""`del-server eval --smoke` end to end, and the README's results against the committed report.

The smoke run uses tiny samples and a small adapter trained for the tests (conftest.py), so
only the report's shape and sanity are checked here (every section, method, attack and figure
present; rates in [0, 1]; sample sizes and seeds stated), never its numbers: `make eval`
produces those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from del_server.adapter import READER_FILE, Adapter
from del_server.attacks.suite import ATTACKS
from del_server.cli import main
from del_server.eval.findings import privacy_findings
from del_server.eval.report import SCHEMA, headline_markdown

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "del_server" / "adapters" / "stories260K"
COMMITTED = REPO / "docs" / "eval"
FIGURES = {
    "utility_vs_attack",
    "utility_vs_epsilon",
    "attacks_vs_epsilon",
    "bits_per_token",
    "latency",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRIVATE = ("del", "del_full", "gaussian")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, small_adapter, tinystories, stories260k) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval")
    main(
        [
            "eval",
            "--smoke",
            "--model",
            str(stories260k),
            "--adapter",
            str(small_adapter),
            "--data",
            str(tinystories),
            "--out",
            str(out),
            "--jobs",  # every slow unit in worker processes, as a full run on 2 cores
            "2",
        ]
    )
    return out, json.loads((out / "eval.json").read_text())


def test_smoke_run_writes_json_markdown_and_every_figure(smoke):
    out, report = smoke
    assert report["schema"] == SCHEMA
    assert set(report["plots"]) == FIGURES
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in (out / "EVAL.md").read_text()


def _check_row(row: dict) -> None:
    """Every rate a share; the strongest is the attack with the highest rate."""
    for recovery in row["attacks"].values():
        for share in ("rate", "low", "high", "content_rate", "half_prompts", "exact_prompts"):
            assert 0 <= recovery[share] <= 1
        assert recovery["low"] <= recovery["rate"] <= recovery["high"]
    best = row["attacks"][row["strongest_attack"]]
    assert row["strongest"] == best["rate"] == max(r["rate"] for r in row["attacks"].values())
    assert row["strongest_high"] == best["high"]


def test_every_private_method_is_attacked_at_every_level_with_every_attack(smoke):
    _, report = smoke
    levels = {lv["target_attack_rate"] for lv in report["setup"]["adapter"]["levels"]}
    privacy = report["privacy"]
    rows = privacy["rows"]
    for family in PRIVATE:
        attacked = {r["target_attack_rate"] for r in rows if r["family"] == family}
        assert attacked == levels, family
    for row in rows:
        _check_row(row)
        assert next(iter(row["attacks"].values()))["prompts"] == privacy["prompts"]
        if row["family"] in PRIVATE:
            assert list(row["attacks"]) == list(ATTACKS)
            assert 0 < row["epsilon_token"] < row["epsilon_prompt"]
    by_family = {r["family"]: r for r in rows}
    assert by_family["clean"]["strongest"] == 1.0
    assert privacy["prompts"] == report["config"]["attack_prompts"]


def test_baselines_are_matched_to_every_level_below_its_target(smoke):
    _, report = smoke
    levels = report["setup"]["adapter"]["levels"]
    expected = {
        f"{f}@{lv['target_attack_rate']:g}" for f in ("del_full", "gaussian") for lv in levels
    }
    assert set(report["baseline_levels"]) == expected
    for level in report["baseline_levels"].values():
        assert max(r["high"] for r in level["attacks"].values()) < level["target_attack_rate"]
        assert level["prompts"] == report["setup"]["calibration_prompts"]


def test_dels_levels_are_attacked_out_of_domain_too(smoke):
    _, report = smoke
    ood, levels = report["out_of_domain"], report["setup"]["adapter"]["levels"]
    assert report["config"]["ood_data"] in ood["text"]
    assert ood["prompts"] == report["config"]["attack_prompts"]
    keys = {r["method"] for r in ood["rows"]}
    assert keys == {"clean", "no_prompt"} | {f"del@{lv['target_attack_rate']:g}" for lv in levels}
    for row in ood["rows"]:
        _check_row(row)
    findings = report["findings"]["privacy"]
    for level in levels:
        line = next(f for f in findings if f.startswith(f"{level['target_attack_rate']:.0%} level"))
        assert "in domain" in line
        assert "out of domain" in line


def test_an_out_of_domain_text_shorter_than_asked_is_named_in_the_findings():
    report = _committed_report()
    assert not any("holds only" in line for line in privacy_findings(report))  # 125 of 125
    short = {**report, "out_of_domain": {**report["out_of_domain"], "prompts": 40}}
    assert (
        "Out of domain, ../shared/data/wikitext-2/valid.txt holds only 40 windows of 32 tokens, "
        "fewer than the 125 attacked in domain: its intervals are the wider for it."
    ) in privacy_findings(short)


def test_utility_covers_references_and_each_method_with_and_without_soft_prompt(smoke):
    _, report = smoke
    keys = {row["key"] for row in report["utility"]["rows"]}
    assert {"clean", "projected", "no_prompt", "no_prompt+soft", "no_prompt+reader"} <= keys
    for level in report["setup"]["adapter"]["levels"]:
        t = level["target_attack_rate"]
        for family in ("del", "del_full", "gaussian"):
            assert {f"{family}@{t:g}", f"{family}+soft@{t:g}"} <= keys
        assert f"del+reader@{t:g}" in keys  # as the small adapter's reader serves it
    seeds, reader_seeds = len(report["config"]["seeds"]), report["config"]["reader_seeds"]
    for row in report["utility"]["rows"]:
        assert row["loss"]["mean"] > 0
        assert -1 <= row["coherence"]["mean"] <= 1
        expected = reader_seeds if row["reader"] else seeds if row["mechanism"] else 1
        assert row["coherence"]["seeds"] == expected
        if row["reader"]:
            assert 0 <= row["read_by"]["ignore_prompt"] <= 1
    served = [c for c in report["comparisons"] if c["method"].startswith("del+reader@")]
    assert {c["against"] for c in served} >= {"no_prompt+reader", "no_prompt+soft"}
    assert any("as served" in line for line in report["findings"]["utility"])


def test_communication_is_measured_through_grpc_and_against_raw(smoke):
    _, report = smoke
    comm = report["communication"]
    wire = comm["wire"]
    assert "raw_fp32" in wire
    for key, row in wire.items():
        assert row["requests"] == report["config"]["wire_requests"]
        assert row["client_counted_equals_server"], key
    here = comm["computed_bits_per_token"]["this_model"]
    for key, row in wire.items():
        if key.startswith("del@"):  # packed
            assert row["payload_bits_per_token"] == here["del"]
        if key.startswith("del-ans@"):  # entropy-coded: about the symbols' entropy
            assert row["payload_bits_per_token"] < 0.9 * here["del"]
        if key != "raw_fp32":
            assert (
                row["wire_bits_per_prompt_token"] < wire["raw_fp32"]["wire_bits_per_prompt_token"]
            )
    for entropy in comm["symbol_entropy"].values():
        assert 0 < entropy["entropy_bits_per_token"] <= entropy["payload_bits_per_token"]


def test_speed_has_codec_end_to_end_and_latency_samples(smoke):
    _, report = smoke
    speed = report["speed"]
    assert all(c["encode_tokens_per_s"] > 0 for c in speed["codec"])
    assert {"in_process", "grpc", "concurrency"} <= set(speed["end_to_end"])
    assert [s["streams"] for s in speed["latency"]] == list(report["config"]["concurrency"])
    for row in speed["latency"]:
        for distribution in (row["time_to_first_token"], row["inter_token_latency"]):
            assert distribution["samples"] > 0
            assert len(distribution["percentiles_ms"]) == 101
            assert distribution["percentiles_ms"] == sorted(distribution["percentiles_ms"])


def test_markdown_states_sample_sizes_and_seeds_and_warns_it_is_not_the_full_run(smoke):
    out, report = smoke
    text = (out / "EVAL.md").read_text()
    assert "smoke" in text
    assert "Quote the numbers of `make eval` only" in text
    assert f"noise seeds {report['config']['seeds']}" in text
    privacy = report["privacy"]
    assert f"{privacy['prompts']} held-out prompts ({privacy['tokens']} tokens" in text
    assert f"{report['out_of_domain']['prompts']} windows of" in text


def _committed_report() -> dict:
    report_path = COMMITTED / "eval.json"
    if not report_path.exists():
        pytest.skip("no committed full report yet (docs/eval/eval.json)")
    report = json.loads(report_path.read_text())
    if report["schema"] != SCHEMA:
        pytest.skip(f"docs/eval predates {SCHEMA}: regenerate it with `make eval`")
    assert report["config"]["mode"] == "full"
    return report


def test_readme_results_table_is_the_committed_reports_headline(tmp_path, monkeypatch):
    report = _committed_report()
    readme = (REPO / "README.md").read_text()
    monkeypatch.chdir(tmp_path)  # as a checkout elsewhere (CI's) renders it
    for line in headline_markdown(report).splitlines():
        assert line in readme, f"README's Results table differs from docs/eval: {line!r}"


def test_docs_eval_describes_the_committed_adapter_and_its_reader():
    described = _committed_report()["setup"]["adapter"]
    for key, name in (("tensors_sha256", "adapter.safetensors"), ("reader_sha256", READER_FILE)):
        digest = hashlib.sha256((ADAPTER / name).read_bytes()).hexdigest()
        assert described.get(key) == digest, (
            f"the committed {name} changed since docs/eval was generated: rerun "
            "`del-server eval --out docs/eval` and update the README's Results"
        )
    assert described["reader_particles"] == Adapter.load(ADAPTER).reader.particles
