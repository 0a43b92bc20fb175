"""The persistent privacy ledger: exact composition per identity, refusal before anything is
written or sent, atomic writes under a lock shared by processes, and `del-client budget`."""

from __future__ import annotations

import json
import multiprocessing
import stat

import pytest

from del_client import accountant
from del_client.budget import PrivacyBudget
from del_client.cli import _ledger_budget, build_parser, main
from del_client.errors import BudgetExceededError, LedgerError, PrivacyParameterError
from del_client.ledger import LedgerBudget, PrivacyLedger
from del_client.mechanism import PrivacySpec

DELTA = 1e-5
SPEC = PrivacySpec.from_mu(mu=10, dim=16, bits=4, clip=0.05)
LOOSER = PrivacySpec.from_mu(mu=20, dim=16, bits=4, clip=0.05)  # larger q


@pytest.fixture
def ledger(tmp_path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "state" / "ledger.json")


def budget(ledger, epsilon=1e6, identity="alice") -> LedgerBudget:
    return LedgerBudget(ledger, identity=identity, epsilon=epsilon, delta=DELTA)


def test_prompts_at_one_setting_compose_exactly(ledger):
    spent = budget(ledger)
    for tokens in (4, 7, 1):
        spent.charge(SPEC, tokens=tokens)
    assert spent.spent == SPEC.epsilon(delta=DELTA, tokens=12)
    entry = ledger.entry("alice")
    assert (entry.draws, entry.q, entry.requests) == (12 * SPEC.draws_per_token, SPEC.q, 3)


def test_mixed_settings_are_charged_at_the_largest_q(ledger):
    spent = budget(ledger)
    spent.charge(SPEC, tokens=4)
    spent.charge(LOOSER, tokens=2)
    draws = 4 * SPEC.draws_per_token + 2 * LOOSER.draws_per_token
    assert spent.spent == accountant.epsilon_for_delta(DELTA, n=draws, q=LOOSER.q)


def test_the_ledger_agrees_with_the_in_memory_budget(ledger):
    memory = PrivacyBudget(epsilon=1e6, delta=DELTA)
    persistent = budget(ledger)
    for spec, tokens in ((SPEC, 3), (LOOSER, 5), (SPEC, 2)):
        assert persistent.charge(spec, tokens=tokens) == memory.charge(spec, tokens=tokens)


def test_what_was_spent_survives_the_process(ledger):
    budget(ledger).charge(SPEC, tokens=4)
    reopened = budget(PrivacyLedger(ledger.path))
    assert reopened.spent == SPEC.epsilon(delta=DELTA, tokens=4)


def test_a_prompt_over_the_budget_is_refused_and_nothing_is_written(ledger):
    limit = SPEC.epsilon(delta=DELTA, tokens=6)
    guarded = budget(ledger, epsilon=limit)
    guarded.charge(SPEC, tokens=4)
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExceededError, match=r"identity 'alice'.*nothing was sent"):
        guarded.charge(SPEC, tokens=3)
    assert ledger.path.read_bytes() == before
    guarded.charge(SPEC, tokens=2)  # exactly up to the limit is allowed
    assert guarded.spent == pytest.approx(limit)


def test_identities_have_separate_budgets(ledger):
    budget(ledger, identity="alice").charge(SPEC, tokens=10)
    budget(ledger, identity="bob").charge(SPEC, tokens=1)
    entries = ledger.entries()
    assert entries["alice"].draws == 10 * entries["bob"].draws


def _charge_many(path: str, identity: str, times: int) -> None:
    ledger_budget = budget(PrivacyLedger(path), identity=identity)
    for _ in range(times):
        ledger_budget.charge(SPEC, tokens=1)


def test_concurrent_processes_lose_no_charge(ledger):
    context = multiprocessing.get_context("fork")  # the child touches only the ledger
    workers = [
        context.Process(target=_charge_many, args=(str(ledger.path), name, 15))
        for name in ("alice", "alice", "alice", "bob")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    entries = ledger.entries()
    assert entries["alice"].requests == 45
    assert entries["alice"].draws == 45 * SPEC.draws_per_token
    assert entries["bob"].requests == 15


def test_the_file_is_private_and_no_temporary_file_is_left(ledger):
    budget(ledger).charge(SPEC, tokens=1)
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == [
        "ledger.json",
        "ledger.json.lock",
    ]


def test_a_failed_write_leaves_the_previous_ledger_whole(ledger, monkeypatch):
    budget(ledger).charge(SPEC, tokens=1)
    before = ledger.path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("del_client.ledger.os.fsync", crash)
    with pytest.raises(LedgerError, match="disk full"):
        budget(ledger).charge(SPEC, tokens=1)
    assert ledger.path.read_bytes() == before
    assert len(list(ledger.path.parent.iterdir())) == 2


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"version": 2, "identities": {}}',
        '{"version": 1}',
        '{"version": 1, "identities": {"alice": {"draws": -1}}}',
        '{"version": 1, "identities": {"alice": {"draws": 1, "q": 0.2, "requests": 1, '
        '"epsilon_limit": 1, "delta": 1e-5, "updated": ""}}}',
    ],
)
def test_a_corrupt_ledger_refuses_every_charge_rather_than_starting_over(ledger, content):
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_text(content)
    with pytest.raises(LedgerError):
        budget(ledger).charge(SPEC, tokens=1)
    assert ledger.path.read_text() == content


def test_reset_forgets_one_identity(ledger):
    budget(ledger, identity="alice").charge(SPEC, tokens=1)
    budget(ledger, identity="bob").charge(SPEC, tokens=1)
    assert ledger.reset("alice")
    assert not ledger.reset("alice")
    assert set(ledger.entries()) == {"bob"}


@pytest.mark.parametrize("identity", ["", "a\nb", "x" * 201])
def test_identities_are_checked(ledger, identity):
    with pytest.raises(PrivacyParameterError):
        LedgerBudget(ledger, identity=identity, epsilon=1, delta=DELTA)


def test_cli_budget_reports_each_identity_exactly(ledger, capsys):
    budget(ledger, identity="alice", epsilon=5000).charge(SPEC, tokens=4)
    budget(ledger, identity="bob", epsilon=5000).charge(SPEC, tokens=1)
    main(["budget", "--ledger", str(ledger.path), "--json"])
    report = json.loads(capsys.readouterr().out)
    alice = report["identities"]["alice"]
    assert alice["epsilon_spent"] == SPEC.epsilon(delta=DELTA, tokens=4)
    assert alice["epsilon_left"] == pytest.approx(5000 - alice["epsilon_spent"])
    assert alice["requests"] == 1
    main(["budget", "--ledger", str(ledger.path), "--identity", "bob", "--delta", "1e-8"])
    text = capsys.readouterr().out
    assert text.startswith("bob")
    assert f"{SPEC.epsilon(delta=1e-8):.4g} at δ = 1e-08" in text


def test_cli_budget_reset_needs_an_identity(ledger, capsys):
    budget(ledger).charge(SPEC, tokens=1)
    with pytest.raises(SystemExit) as refused:
        main(["budget", "--ledger", str(ledger.path), "--reset"])
    assert refused.value.code == 2
    assert "--reset needs --identity" in capsys.readouterr().err
    main(["budget", "--ledger", str(ledger.path), "--reset", "--identity", "alice"])
    assert "reset 'alice'" in capsys.readouterr().out
    assert ledger.entries() == {}


def generate_budget(ledger, *flags: str):
    """The budget `del-client generate` would charge with these flags."""
    argv = ["generate", "Once upon a time", "--ledger", str(ledger.path), *flags]
    return _ledger_budget(build_parser().parse_args(argv))


def test_cli_generate_with_an_identity_charges_the_limit_the_ledger_holds(ledger):
    budget(ledger, epsilon=5000).charge(SPEC, tokens=4)
    configured = generate_budget(ledger, "--identity", "alice")
    assert (configured.identity, configured.epsilon, configured.delta) == ("alice", 5000, DELTA)
    configured.charge(SPEC, tokens=1)
    assert ledger.entry("alice").requests == 2
    assert _ledger_budget(build_parser().parse_args(["generate", "x"])) is None  # no flag


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--identity", "alice"],
            "identity 'alice' has no budget in {path} yet: add --budget-epsilon",
        ),
        ([], "identity 'default' has no budget in {path} yet: add --budget-epsilon"),
        (["--budget-delta", "1e-6"], "--budget-delta goes with --budget-epsilon"),
    ],
)
def test_cli_generate_refuses_budget_flags_that_would_charge_nothing(
    ledger, capsys, flags, message
):
    argv = ["generate", "x", "--server", "127.0.0.1:1", "--ledger", str(ledger.path), *flags]
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("del-client: error: " + message.format(path=ledger.path))
    assert err.count("\n") == 1
    assert ledger.entries() == {}
