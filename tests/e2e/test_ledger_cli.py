"""`del-client generate --budget-epsilon` charges the persistent ledger before sending, refuses
a prompt over the budget without contacting the generation path, and `del-client budget`
reports exactly what the generations said they spent."""

from __future__ import annotations

import json

import pytest

from del_client.cli import main

PROMPT = "Once upon a time"


def requests_total(server) -> float:
    registry = server.running.metrics.registry
    return sum(
        registry.get_sample_value("del_requests_total", {"code": code}) or 0.0
        for code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION")
    )


def test_generations_charge_the_ledger_and_the_budget_command_reports_it(
    server, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path / "bundles"))
    ledger = tmp_path / "ledger.json"
    spend = ["--budget-epsilon", "5000", "--identity", "alice", "--ledger", str(ledger)]
    spent = []
    for _ in range(2):
        main(
            [
                "generate",
                PROMPT,
                "--server",
                server.target,
                *["--mu", "10", "--max-new-tokens", "2"],
                "--json",
                *spend,
            ]
        )
        spent.append(json.loads(capsys.readouterr().out)["epsilon_prompt"])
    main(["budget", "--ledger", str(ledger), "--json"])
    alice = json.loads(capsys.readouterr().out)["identities"]["alice"]
    assert alice["requests"] == 2
    # Same setting twice: exactly one prompt of twice the length, more than one prompt, less
    # than the sum of the two (composition is exact, not additive).
    assert spent[0] < alice["epsilon_spent"] < 2 * spent[0]
    assert alice["epsilon_limit"] == 5000

    before = requests_total(server)
    over = str(alice["epsilon_spent"] * 1.01)
    spend = ["--budget-epsilon", over, "--identity", "alice", "--ledger", str(ledger)]
    with pytest.raises(SystemExit) as refused:
        main(["generate", PROMPT, "--server", server.target, "--mu", "10", *spend])
    assert refused.value.code == 2
    assert "would bring ε to" in capsys.readouterr().err
    assert requests_total(server) == before  # nothing reached the server
    main(["budget", "--ledger", str(ledger), "--identity", "alice", "--json"])
    assert json.loads(capsys.readouterr().out)["identities"]["alice"]["requests"] == 2
