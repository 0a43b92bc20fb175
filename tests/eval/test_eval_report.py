"""`del-server eval --smoke` end to end, and the README's results against the committed report.

The smoke run uses tiny samples, so only the report's shape and sanity are checked here (every
section, method and figure present; rates in [0, 1]; sample sizes and seeds stated), never
its numbers: `make eval` produces those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from del_server.cli import main
from del_server.eval.report import SCHEMA, headline_markdown

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "del_server" / "adapters" / "stories260K"
COMMITTED = REPO / "docs" / "eval"
TINYSTORIES = "data/tinystories/tinystories_val_head_dev.txt"
FIGURES = {
    "utility_vs_attack",
    "utility_vs_epsilon",
    "attacks_vs_epsilon",
    "bits_per_token",
    "latency",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_dir, stories260k) -> tuple[Path, dict]:
    if not (ADAPTER / "adapter.json").exists():
        pytest.fail(f"the committed adapter is missing at {ADAPTER} (make train-default)")
    out = tmp_path_factory.mktemp("eval")
    main(
        [
            "eval",
            "--smoke",
            "--model",
            str(stories260k),
            "--adapter",
            str(ADAPTER),
            "--data",
            str(shared_dir / TINYSTORIES),
            "--out",
            str(out),
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


def test_every_private_method_is_attacked_at_every_level_with_three_attacks(smoke):
    _, report = smoke
    levels = {lv["target_attack_rate"] for lv in report["setup"]["adapter"]["levels"]}
    rows = report["privacy"]["rows"]
    for family in ("del", "del_full", "gaussian"):
        attacked = {r["target_attack_rate"] for r in rows if r["family"] == family}
        assert attacked == levels, family
    for row in rows:
        rates = [row[a] for a in ("nearest_neighbour", "likelihood", "learned", "strongest")]
        assert all(r is None or 0 <= r <= 1 for r in rates)
        if row["family"] in ("del", "del_full", "gaussian"):
            assert None not in rates
            assert row["strongest"] == max(rates[:3])
            assert 0 < row["epsilon_token"] < row["epsilon_prompt"]
    assert {r["family"]: r["strongest"] for r in rows}["clean"] == 1.0


def test_utility_covers_references_and_each_method_with_and_without_soft_prompt(smoke):
    _, report = smoke
    keys = {row["key"] for row in report["utility"]["rows"]}
    assert {"clean", "projected", "no_prompt", "no_prompt+soft"} <= keys
    for level in report["setup"]["adapter"]["levels"]:
        t = level["target_attack_rate"]
        for family in ("del", "del_full", "gaussian"):
            assert {f"{family}@{t:g}", f"{family}+soft@{t:g}"} <= keys
    seeds = len(report["config"]["seeds"])
    for row in report["utility"]["rows"]:
        assert row["loss"]["mean"] > 0
        assert -1 <= row["coherence"]["mean"] <= 1
        assert row["coherence"]["seeds"] == (seeds if row["mechanism"] else 1)
    assert report["comparisons"]
    assert report["findings"]["utility"]


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
        if key.startswith("del@"):
            assert row["payload_bits_per_token"] == here["del"]
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
    assert f"{report['privacy']['tokens']} held-out tokens" in text


def test_readme_results_table_is_the_committed_reports_headline():
    report_path = COMMITTED / "eval.json"
    if not report_path.exists():
        pytest.skip("no committed full report yet (docs/eval/eval.json)")
    report = json.loads(report_path.read_text())
    assert report["config"]["mode"] == "full"
    adapter_digest = hashlib.sha256((ADAPTER / "adapter.safetensors").read_bytes()).hexdigest()
    assert report["setup"]["adapter"]["tensors_sha256"] == adapter_digest, (
        "the committed adapter changed since docs/eval was generated: rerun "
        "`del-server eval --out docs/eval` and update the README's Results"
    )
    readme = (REPO / "README.md").read_text()
    for line in headline_markdown(report).splitlines():
        assert line in readme, f"README's Results table differs from docs/eval: {line!r}"
