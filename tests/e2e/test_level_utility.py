"""A level worse than sending nothing is never offered silently: the committed adapter records
each level's utility, the manifest publishes it, and the client warns whenever such a level is
used (the requirement of docs/PROTOCOL.md §6).

The server runs the committed adapter of the default model, copied with its levels' records
changed so that one server shows all three cases: t0.05 without a record (an adapter evaluated
before records existed), t0.10 within its sampling error of nothing sent, t0.20 better than
nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from del_client import Client, ClientConfig
from del_client.cli import main
from del_server.adapter import Adapter
from del_server.settings import Settings

ADAPTER = Path(__file__).resolve().parents[2] / "del_server" / "adapters" / "stories260K"
PROMPT = "Once upon a time"
WARNING = "del-client: warning: "


@pytest.fixture(scope="module")
def committed() -> Adapter:
    return Adapter.load(ADAPTER)


@pytest.fixture(scope="module")
def edited(tmp_path_factory) -> Path:
    """The committed adapter; t0.05's record removed, t0.10's margin widened past its gain
    over nothing sent, t0.20's nothing-sent figure raised above its value (the tensors are the
    committed ones, so the adapter still loads)."""
    directory = tmp_path_factory.mktemp("adapter")
    shutil.copytree(ADAPTER, directory, dirs_exist_ok=True)
    description = json.loads((directory / "adapter.json").read_text())
    without, within, better = description["calibration"]
    del without["utility"]
    gain = within["utility"]["nothing_sent"] - within["utility"]["value"]
    within["utility"]["margin"] = abs(gain) + 0.01
    better["utility"]["nothing_sent"] = better["utility"]["value"] + 0.5
    (directory / "adapter.json").write_text(json.dumps(description))
    return directory


@pytest.fixture(scope="module")
def record(edited):
    """t0.10's utility record as the edited adapter holds it."""
    return Adapter.load(edited).calibration[1].utility


@pytest.fixture(scope="module")
def target(serve, stories260k, edited) -> str:
    settings = Settings(
        model=str(stories260k), adapter=str(edited), port=0, metrics_port=-1, enable_raw=True
    )
    with serve(settings) as loopback:
        yield loopback.target


@pytest.fixture
def cli(target, tmp_path, monkeypatch, capsys):
    """del-client's main against the server -> (stdout, stderr)."""
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))

    def run(*args: str) -> tuple[str, str]:
        main([args[0], *args[1:], "--server", target])
        captured = capsys.readouterr()
        return captured.out, captured.err

    return run


def test_every_level_of_the_committed_adapter_records_its_utility(committed):
    for level in committed.calibration:
        utility = level.utility
        assert utility.metric == "held-out continuation loss (nats/token)"
        assert not utility.higher_is_better
        assert utility.margin > 0  # paired over windows against sending nothing
        assert utility.better_than_nothing == (
            utility.value + utility.margin < utility.nothing_sent
        )
        assert "held-out windows" in utility.measured_on
    # stories260K through its particle reader: the 10 % and 20 % levels pay beyond sampling error.
    assert [level.utility.better_than_nothing for level in committed.calibration] == [
        False,
        True,
        True,
    ]


def test_the_manifest_carries_each_levels_utility_and_the_servers_verdict(target, record):
    with Client(ClientConfig(target)) as client:
        levels = client.manifest().model.privacy_levels
    without, worse, better = levels
    assert (without.utility, without.better_than_nothing) == (None, None)
    assert worse.utility.metric == record.metric
    assert (worse.utility.value, worse.utility.nothing_sent) == (record.value, record.nothing_sent)
    assert worse.utility.measured_on == record.measured_on
    assert worse.better_than_nothing is False
    assert better.better_than_nothing is True


def test_cli_manifest_shows_each_level_against_nothing_sent(cli, record):
    out, _ = cli("manifest")
    assert (
        f"utility: held-out continuation loss (nats/token) {record.value:.3f} against "
        f"{record.nothing_sent:.3f} with nothing sent (lower is better): NOT better than "
        "sending nothing"
    ) in out
    assert ": better than sending nothing" in out  # t0.20 as edited
    assert out.count("utility: ") == 2  # t0.05 has no record
    json_out, _ = cli("manifest", "--json")
    levels = json.loads(json_out)["models"][0]["privacy_levels"]
    assert levels[1]["utility"]["better_than_nothing"] is False
    assert levels[0]["utility"] is None


def test_cli_manifest_says_how_the_server_reads_a_prompt_before_one_is_sent(cli, committed):
    out, _ = cli("manifest")
    reader = committed.reader
    assert (
        "reading       particle reader: the server decodes each prompt from its symbols "
        f"({reader.particles} particles) and continues one draw"
    ) in out
    for level in committed.calibration:
        share = reader.ignore_prompt[level.mu]
        assert f"prompt left unread {share:.0%} of the time" in out
    json_out, _ = cli("manifest", "--json")
    model = json.loads(json_out)["models"][0]
    assert (model["prompt_reading"], model["reader_particles"]) == ("particle", reader.particles)
    assert [level["ignore_probability"] for level in model["privacy_levels"]] == [
        reader.ignore_prompt[level.mu] for level in committed.calibration
    ]


def test_cli_generate_warns_once_at_a_level_worse_than_nothing(cli, record):
    out, err = cli("generate", PROMPT, "--level", "0.10", "--max-new-tokens", "2")
    assert out.startswith(PROMPT)
    warnings = [line for line in err.splitlines() if line.startswith(WARNING)]
    # Nominally lower, but within the sampling error the server measured: not "worse".
    relation = (
        "within its sampling error of" if record.value < record.nothing_sent else "worse than"
    )
    assert warnings == [
        f"{WARNING}at level t0.10 the server measured held-out continuation loss (nats/token) "
        f"{record.value:.3f}, {relation} the {record.nothing_sent:.3f} it gets with "
        "nothing sent: on this model the private prompt does not help"
    ]
    json_out, err = cli("generate", PROMPT, "--level", "0.10", "--max-new-tokens", "2", "--json")
    assert json.loads(json_out)["utility"]["better_than_nothing"] is False
    assert err.count(WARNING) == 1


@pytest.mark.parametrize(
    "privacy",
    [
        pytest.param(["--level", "0.20"], id="a level better than nothing"),
        pytest.param(["--level", "0.05"], id="a level with no record"),
        pytest.param(["--mu", "3"], id="parameters of no level"),
        pytest.param(["--mechanism", "raw"], id="raw"),
    ],
)
def test_cli_generate_does_not_warn_about_utility_otherwise(cli, privacy):
    _, err = cli("generate", PROMPT, *privacy, "--max-new-tokens", "2")
    assert "nothing sent" not in err


def test_the_result_says_whether_its_level_beats_sending_nothing(target, tmp_path):
    config = ClientConfig(target, bundle_cache_dir=tmp_path)
    with Client(config) as client:
        worse = client.generate(PROMPT, level=0.10, max_new_tokens=2).collect()
        better = client.generate(PROMPT, level=0.20, max_new_tokens=2).collect()
        own = client.generate(PROMPT, mu=3.0, max_new_tokens=2).collect()
    assert (worse.level_id, worse.better_than_nothing) == ("t0.10", False)
    assert (better.level_id, better.better_than_nothing) == ("t0.20", True)
    assert (own.level_id, own.utility, own.better_than_nothing) == ("", None, None)
