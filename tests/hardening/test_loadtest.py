"""`del-client loadtest` at small scale: every request is accounted for, as OK or by status,
and the client's counts agree with the server's. The figures for 1-64 streams are measured
against `del-server serve` by hand (README, "Security and reliability")."""

from __future__ import annotations

import asyncio
import json

import pytest
from hardening_kit import sample

from del_client import ClientConfig, RequestOptionError
from del_client.cli import main
from del_client.loadtest import latency_summary, run_load
from del_server.tools import loadsweep


@pytest.fixture
def config(server, tmp_path) -> ClientConfig:
    return ClientConfig(server.target, bundle_cache_dir=tmp_path, deadline_s=30, retries=0)


def counts(server) -> dict[str, float]:
    return {
        code: sample(server, "del_requests_total", {"code": code})
        for code in ("OK", "RESOURCE_EXHAUSTED")
    }


def test_a_short_load_completes_every_request_and_the_server_agrees(server, config):
    before = counts(server)
    report = asyncio.run(run_load(config, concurrency=4, duration_s=1.0, max_new_tokens=4))
    assert report.requests >= 4
    assert report.ok == report.requests
    assert report.errors == {}
    assert report.lost == 0
    assert counts(server)["OK"] == before["OK"] + report.ok
    for latency in (report.ttft_s, report.e2e_s):
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report.ttft_s["p50"] <= report.e2e_s["p50"]
    assert report.throughput_rps == pytest.approx(report.ok / report.elapsed_s)
    assert report.tokens_per_s > 0


def test_streams_beyond_the_servers_slots_are_counted_by_status_and_none_is_lost(server, config):
    """The loopback server admits 4 running + 8 waiting streams; 16 workers overflow it."""
    before = counts(server)
    report = asyncio.run(
        run_load(config, concurrency=16, duration_s=1.0, max_new_tokens=16, max_requests=64)
    )
    assert report.lost == 0
    assert set(report.errors) == {"RESOURCE_EXHAUSTED"}
    assert report.ok + report.errors["RESOURCE_EXHAUSTED"] == report.requests <= 64
    after = counts(server)
    assert after["OK"] - before["OK"] == report.ok
    assert (
        after["RESOURCE_EXHAUSTED"] - before["RESOURCE_EXHAUSTED"]
        == report.errors["RESOURCE_EXHAUSTED"]
    )


def test_cli_loadtest_prints_one_json_report(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    flags = ["--concurrency", "2", "--duration", "0.5", "--max-new-tokens", "2", "--json"]
    main(["loadtest", "--server", server.target, *flags])
    report = json.loads(capsys.readouterr().out)
    assert report["concurrency"] == 2
    assert report["lost"] == 0
    assert report["ok"] == report["requests"] > 0
    assert set(report["ttft_s"]) == {"p50", "p90", "p99", "mean", "max"}


@pytest.mark.parametrize(
    "bounds",
    [
        {"concurrency": 0, "duration_s": 1},
        {"concurrency": 5000, "duration_s": 1},
        {"concurrency": 1, "duration_s": 0},
        {"concurrency": 1, "duration_s": 7200},
        {"concurrency": 1, "duration_s": 1, "max_requests": 0},
    ],
)
def test_the_load_is_bounded(config, bounds):
    with pytest.raises(RequestOptionError):
        asyncio.run(run_load(config, **bounds))


def test_latency_summary_of_nothing_is_empty_not_an_error():
    assert latency_summary([]) == {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    assert latency_summary([1.0, 2.0, 3.0])["p50"] == 2.0


def test_the_sweep_against_a_server_process_writes_its_table_data_and_plot(stories260k, tmp_path):
    sweep = ["--concurrency", "1", "2", "--duration", "1", "--max-new-tokens", "4"]
    loadsweep.main(["--model", str(stories260k), *sweep, "--out", str(tmp_path)])
    levels = json.loads((tmp_path / "loadtest.json").read_text())["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    assert all(level["server_agrees"] and level["ok"] > 0 for level in levels)
    assert (tmp_path / "loadtest.md").read_text().count("| True |") == 2
    assert (tmp_path / "loadtest.png").read_bytes().startswith(b"\x89PNG")
