"""What an operator sees: each mistake is one line naming the flag and the fix, exit status 2,
found before the model loads; a port in use is refused, never shared; --help describes every
flag. Commands run as real `del-server` processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from del_server import settings as settings_module
from del_server.cli import main
from del_server.settings import DEFAULT_MODEL, SettingError, Settings, check_files
from del_server.train.defaults import DEFAULT_DATA

REPO = Path(__file__).resolve().parents[2]


def del_server(*argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """`del-server ARGV` as its console script runs it; 60 s is far beyond what it needs."""
    return subprocess.run(
        [sys.executable, "-c", "from del_server.cli import main; main()", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **env},
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "99999"], "del-server: error: --port must lie in 0..65535, got 99999"),
        (["--max-running", "0"], "del-server: error: --max-running must be >= 1, got 0"),
        (["--max-reading", "0"], "del-server: error: --max-reading must be >= 1, got 0"),
        (["--port", "eighty"], "del-server serve: error: argument --port: invalid int value"),
        (["--tls-cert", "a.pem"], "--tls-cert and --tls-key go together: give both or neither"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_flag(argv, expected):
    assert expected in one_line_error(del_server("serve", *argv))


def test_a_missing_model_path_says_what_a_model_is(tmp_path):
    line = one_line_error(del_server("serve", "--model", str(tmp_path / "nowhere")))
    assert line == (
        f"del-server: error: --model {tmp_path / 'nowhere'}: no such file or directory (a model "
        "is a llama2.c directory or .bin file, a Hugging Face directory, or a hub id such as "
        "org/name)"
    )


def test_an_unknown_hub_id_fails_at_once_offline(tmp_path):
    result = del_server(
        "serve", "--model", "some-org/no-such-model", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path)
    )
    assert one_line_error(result) == (
        "del-server: error: --model some-org/no-such-model is neither a local path nor in the "
        "Hugging Face cache, and HF_HUB_OFFLINE is set: download it first, or give a local "
        "directory"
    )


def test_a_missing_adapter_directory_is_found_before_the_model_loads(tmp_path, stories260k):
    line = one_line_error(
        del_server("serve", "--model", str(stories260k), "--adapter", "nowhere", cwd=tmp_path)
    )
    assert line.startswith(f"del-server: error: --adapter {tmp_path / 'nowhere'} holds no ")
    assert "or no --adapter for the training-free PCA projection" in line


@pytest.mark.parametrize(
    "command", ["eval", "eval-nlu", "eval-frontier", "eval-frontier-nlu", "audit"]
)
def test_an_evaluation_without_a_trained_adapter_stops_before_it_measures(command, tmp_path):
    line = one_line_error(del_server(command, "--adapter", "nowhere", cwd=tmp_path))
    assert line.startswith(f"del-server {command}: error: argument --adapter: ")
    assert f"{tmp_path / 'nowhere'} holds no adapter.json" in line


def test_comparing_frontiers_needs_directories_that_eval_frontier_wrote(tmp_path):
    line = one_line_error(del_server("eval-frontier-compare", "nowhere", cwd=tmp_path))
    assert line.startswith("del-server eval-frontier-compare: error: argument records: ")
    assert f"{tmp_path / 'nowhere'} holds no frontier.json" in line


def test_a_frontier_record_without_the_mixture_is_refused_naming_it(tmp_path):
    record = tmp_path / "old"
    record.mkdir()
    (record / "frontier.json").write_text('{"points": [{"mu": 1.0, "posterior": 1.7}]}')
    line = one_line_error(del_server("eval-frontier-compare", "old", cwd=tmp_path))
    assert line.startswith("del-server eval-frontier-compare: error: argument records: ")
    assert "old/frontier.json predates the posterior mixture" in line


@pytest.mark.parametrize(
    ("argv", "record"),
    [
        (["eval", "--render-only"], "eval.json: no evaluation to redraw"),
        (["audit", "--render-only"], "audit.json: no audit to redraw"),
        (["eval-frontier-nlu", "--served-only"], "frontier.json: no grid to add to"),
    ],
)
def test_a_redraw_where_no_record_lies_names_the_missing_file(argv, record, tmp_path):
    line = one_line_error(del_server(*argv, "--out", str(tmp_path), cwd=tmp_path))
    assert line == f"del-server {argv[0]}: error: {tmp_path / record}"


def test_a_redraw_of_a_file_that_is_no_record_says_so(tmp_path):
    (tmp_path / "eval.json").write_text("{")
    line = one_line_error(del_server("eval", "--render-only", "--out", str(tmp_path)))
    assert line.startswith(f"del-server eval: error: {tmp_path / 'eval.json'} is not a record ")


def test_served_rows_alone_refuse_options_of_the_grid_they_keep(tmp_path):
    argv = ["eval-frontier-nlu", "--served-only", "--point", "2,2,8", "--projection-steps", "5"]
    assert one_line_error(del_server(*argv, "--out", str(tmp_path), cwd=tmp_path)) == (
        "del-server eval-frontier-nlu: error: --served-only keeps the grid: --point, "
        "--projection-steps unused"
    )


def test_a_frontier_at_bits_the_codec_cannot_carry_stops_before_it_measures(tmp_path):
    line = one_line_error(del_server("eval-frontier", "--bits", "40", cwd=tmp_path))
    assert line == (
        "del-server eval-frontier: error: argument --bits: expected bits per coordinate in 1..8, "
        "got '40' (see --help)"
    )


def test_an_audit_of_unknown_attacks_stops_before_it_measures(tmp_path):
    line = one_line_error(del_server("audit", "--attacks", "lm_filter,psychic", cwd=tmp_path))
    assert line.startswith("del-server audit: error: argument --attacks: unknown attacks ")
    assert "['psychic']: choose among nearest_neighbour, likelihood," in line


def test_an_audit_of_a_level_the_adapter_does_not_offer_names_those_it_does(tmp_path):
    line = one_line_error(del_server("audit", "--levels", "0.3", cwd=tmp_path))
    assert line.startswith("del-server audit: error: ")
    assert line.endswith("offers no level for 30%: its levels are 5%, 10%, 20%")


def test_an_audit_past_the_held_out_prompts_says_how_many_there_are(tmp_path):
    line = one_line_error(del_server("audit", "--skip", "580", "--prompts", "10", cwd=tmp_path))
    assert line.startswith("del-server audit: error: ")
    assert line.endswith(
        "holds 585 held-out prompts: 10 after the first 580 do not fit (fewer --prompts, or a "
        "smaller --skip)"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["all", "--bits", "9"], "--bits: expected bits per coordinate in 1..8, got '9'"),
        (["all", "--targets", "0.05,1.5"], "--targets: comma-separated rates in (0, 1), got "),
        (["all", "--trigram-keep", "0"], "--trigram-keep: expected a whole number >= 1, got '0'"),
        (["all", "--batch", "-1"], "--batch: expected a whole number >= 1, got '-1'"),
        (["all", "--soft-prompt-steps", "0"], "--soft-prompt-steps: expected a whole number >= 1"),
        (["all", "--inversion-steps", "-1"], "--inversion-steps: expected a whole number >= 0"),
        (["evaluate", "--jobs", "0"], "--jobs: expected a whole number >= 1, got '0'"),
        (["soft-prompt", "--mu", "2,-1"], "--mu: comma-separated finite numbers > 0, got '2,-1'"),
        (["classify", "--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
        (["classify", "--held-out", "0"], "--held-out: expected a whole number >= 1, got '0'"),
        (["classify", "--check-every", "x"], "--check-every: expected a whole number >= 1"),
    ],
)
def test_a_training_value_out_of_range_stops_before_anything_trains(argv, expected, tmp_path):
    line = one_line_error(del_server("train", *argv, "--out", "adapter", cwd=tmp_path))
    assert line.startswith(f"del-server train {argv[0]}: error: argument ")
    assert expected in line
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["all", "--dim", "65"],
            "projection dim 65 is outside 1..64, the model's embedding width",
        ),
        (["all", "--data", "nowhere.txt"], "--data nowhere.txt: no such file or directory"),
        (["classify", "--data", "."], "--data .: no train.tsv (a task directory holds train.tsv"),
        (
            ["all", "--calibration-prompts", "100000"],
            "--calibration-prompts: 100000 windows, but the held-out text holds 585; use more text",
        ),
        (
            ["classify", "--calibration-prompts", "100000"],
            "--calibration-prompts: 100000 windows of 16 tokens, but the dev sentences hold 1262",
        ),
        (
            ["classify", "--held-out", "100000"],
            "--held-out 100000: train.tsv has 20358 rows of 12 or more words",
        ),
    ],
)
def test_input_that_only_the_loaded_model_or_data_refutes_is_one_line_leaving_nothing(
    argv, expected, tmp_path
):
    line = one_line_error(del_server("train", *argv, "--out", "adapter", cwd=tmp_path))
    assert line.startswith(f"del-server: error: {expected}")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("command", ["all", "classify"])
def test_max_mu_caps_that_do_not_pair_with_the_targets_stop_before_anything_trains(
    command, tmp_path
):
    argv = ("train", command, "--targets", "0.075,0.1", "--max-mu", "8,10,64", "--out", "adapter")
    line = one_line_error(del_server(*argv, cwd=tmp_path))
    assert line == (
        "del-server: error: --max-mu gives 3 caps for 2 targets: give one for every level, "
        "or one per target in --targets' order"
    )
    assert not (tmp_path / "adapter").exists()


def write_short_stories(path: Path) -> None:
    """The default training text cut to 200 stories: 30 held-out windows."""
    stories = Path(DEFAULT_DATA).read_text().split("\n\n")
    path.write_text("\n\n".join(stories[:200]))


def test_text_too_short_for_the_particle_reader_is_refused_before_anything_trains(tmp_path):
    write_short_stories(tmp_path / "short.txt")
    argv = ["all", "--front-end", "posterior", "--data", "short.txt", "--calibration-prompts", "8"]
    line = one_line_error(del_server("train", *argv, "--out", "adapter", cwd=tmp_path))
    assert line == (
        "del-server: error: the held-out text holds 30 windows: the loss is reported on the first "
        "256, which leaves none to fit the particle reader's λ on; use more text (--data), or "
        "serve no reader (--reader-particles 0)"
    )
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            [],  # the full run calibrates on the adapter's 250 prompts
            "the calibration prompts: 250 windows, but the held-out text holds 30; use more text "
            "(--data) or a smaller run (--quick, --smoke)",
        ),
        (
            ["--quick"],  # 24 calibration and attack prompts fit, but the reader's λ does not
            "the held-out text holds 30 windows: the loss is reported on the first 32, which "
            "leaves none to fit the particle reader's λ on; use more text (--data) or a smaller "
            "run (--quick, --smoke)",
        ),
    ],
)
def test_eval_refuses_text_too_short_for_its_prompts_keeping_earlier_checkpoints(
    mode, expected, tmp_path
):
    write_short_stories(tmp_path / "short.txt")
    earlier = tmp_path / "report" / "checkpoints" / "utility.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    argv = ["eval", *mode, "--data", "short.txt", "--out", "report"]
    line = one_line_error(del_server(*argv, cwd=tmp_path))
    assert line == f"del-server: error: {expected}"
    assert earlier.exists()
    fresh = one_line_error(del_server(*argv[:-1], "fresh", cwd=tmp_path))
    assert fresh == line
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "--eval-windows: 256 windows, but the held-out text holds 30"),
        (["--eval-windows", "8"], "--attack-prompts: 250 windows, but the held-out text holds 30"),
    ],
)
def test_eval_frontier_refuses_text_too_short_for_its_sweep_before_anything_trains(
    flags, expected, tmp_path
):
    write_short_stories(tmp_path / "short.txt")
    argv = ["eval-frontier", *flags, "--data", "short.txt", "--out", "frontier"]
    line = one_line_error(del_server(*argv, cwd=tmp_path))
    assert line == f"del-server: error: {expected}; use more text (--data) or ask for fewer"
    assert not (tmp_path / "frontier" / "frontier.json").exists()


def test_eval_nlu_refuses_dev_sentences_too_few_for_the_adapters_calibration(tmp_path):
    words = "this is sentence {} of the training text and it is {}"  # long enough to hold out
    rows = [
        "sentence\tlabel",
        *(f"{words.format(i, ('bad', 'good')[i % 2])}\t{i % 2}" for i in range(2100)),
    ]
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train.tsv").write_text("\n".join(rows) + "\n")
    dev = ["sentence\tlabel", *(f"{('bad', 'good')[i % 2]}\t{i % 2}" for i in range(100))]
    (tmp_path / "task" / "dev.tsv").write_text("\n".join(dev) + "\n")
    line = one_line_error(del_server("eval-nlu", "--data", "task", "--out", "report", cwd=tmp_path))
    assert line == (
        "del-server: error: --data task (the adapter's calibration): 250 windows of 16 tokens, "
        "but the dev sentences hold 6"
    )
    assert not (tmp_path / "report").exists()


def test_a_projection_wider_than_the_model_names_the_servers_flag(tmp_path):
    argv = ["--projection-dim", "65", "--out", str(tmp_path / "bundle")]
    line = one_line_error(del_server("export-client-bundle", *argv))
    assert line == (
        "del-server: error: --projection-dim: projection dim 65 is outside 1..64, the model's "
        "embedding width"
    )


@pytest.mark.parametrize("stage", ["evaluate", "recalibrate"])
def test_a_stage_that_continues_a_trained_adapter_needs_one(stage, tmp_path):
    line = one_line_error(del_server("train", stage, "--out", "nowhere", cwd=tmp_path))
    assert line.startswith(f"del-server train {stage}: error: argument --out: ")
    assert (
        f"{tmp_path / 'nowhere'} holds no trained adapter (training.json): train one with "
        "`del-server train all --out nowhere`"
    ) in line


def test_the_default_model_is_found_from_any_working_directory(tmp_path, monkeypatch):
    assert Path(DEFAULT_MODEL) == REPO.parent / "shared" / "models" / "stories260K"
    monkeypatch.chdir(tmp_path)
    if Path(DEFAULT_MODEL).exists():  # the reference data may live elsewhere (DEL_SHARED_DIR)
        check_files(Settings())
    monkeypatch.setattr(settings_module, "DEFAULT_MODEL", str(tmp_path / "absent"))
    with pytest.raises(SettingError) as missing:
        check_files(Settings(model=str(tmp_path / "absent")))
    assert missing.value.for_operator().startswith("--model is not set and its default, ")


def listening_socket() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


@pytest.mark.parametrize("flag", ["--metrics-port", "--health-port"])
def test_a_port_in_use_is_refused_naming_it(flag, stories260k):
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        argv = ["--model", str(stories260k), "--port", "0", "--metrics-port", "-1", flag, str(port)]
        line = one_line_error(del_server("serve", *argv))
    assert line == (
        f"del-server: error: {flag} {port} is already in use on 127.0.0.1: stop the process "
        "that listens there, or choose a free one"
    )


def test_a_second_server_on_a_served_port_is_refused_and_the_first_keeps_serving(
    server, stories260k
):
    port = str(server.running.port)
    line = one_line_error(
        del_server("serve", "--model", str(stories260k), "--port", port, "--metrics-port", "-1")
    )
    assert line.startswith(f"del-server: error: --port {port} is already in use on 127.0.0.1")
    with grpc.insecure_channel(server.target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_does_not_share_a_port_taken_after_the_check(server, stories260k, monkeypatch):
    """gRPC binds with SO_REUSEPORT unless told not to: two servers would split the traffic."""
    from del_server import server as server_module

    monkeypatch.setattr(server_module, "check_ports", lambda settings: None)
    settings = Settings(model=str(stories260k), port=server.running.port, metrics_port=-1)
    with pytest.raises(SettingError, match=f"port {settings.port} cannot be bound"):
        asyncio.run(server_module.start(settings, served=server.running.served))


def help_entries(text: str) -> dict[str, str]:
    """Each entry of a --help text (an option or a command): its help, beside or below it."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() and 2 <= indent <= 4:
            invocation, _, rest = line.strip().partition("  ")
            name = invocation.split(" ")[0].rstrip(",")
            entries[name] = rest.strip()
        elif name and indent > 4 and line.strip():
            entries[name] = f"{entries[name]} {line.strip()}".strip()
        else:
            name = None
    return entries


@pytest.mark.parametrize("command", ["serve", "export-client-bundle"])
def test_help_describes_every_flag(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    entries = help_entries(text)
    flags = [settings_module.flag(f.name) for f in fields(Settings) if "env_only" not in f.metadata]
    assert set(flags) <= set(entries)
    assert all(entries.values()), [flag for flag, help in entries.items() if not help]
    assert "(env DEL_MAX_RUNNING; default 16)" in entries["--max-running"]
    if command == "serve":
        assert "DEL_AUTH_TOKENS: bearer tokens, comma-separated (environment only)" in text


def test_top_level_help_describes_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    entries = help_entries(capsys.readouterr().out)
    for command in ("serve", "export-client-bundle", "train", "calibrate", "eval"):
        assert entries.get(command), command
