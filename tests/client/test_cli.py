"""`del-client` for a newcomer: it starts without loading the numeric stack, refuses bad input
in one line with exit status 2, and keeps the prompt apart from the continuation on a terminal.

How fast it starts is measured by `make bench` (reports/bench_cli.md), not here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from del_client.cli import _shown, main

LOADS_NOTHING_HEAVY = """
import sys
import del_client.cli
del_client.cli.build_parser().format_help()
heavy = {"scipy", "numba", "numpy", "grpc", "constriction"}
heavy &= {name.split(".")[0] for name in sys.modules}
assert not heavy, sorted(heavy)
"""


def test_the_cli_and_its_help_load_no_numeric_or_network_library():
    result = subprocess.run(
        [sys.executable, "-c", LOADS_NOTHING_HEAVY], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_a_commands_options_are_declared_when_it_is_used(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--budget-epsilon" in out
    assert "(default 1e-05)" in out


def refusal(argv: list[str], capsys) -> str:
    """The one line `del-client ARGV` prints when it exits 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_prompt_that_is_not_utf8_is_refused_in_one_line():
    """Bytes that are not UTF-8 reach Python's argv as lone surrogates (surrogateescape)."""
    command = [sys.executable, "-c", "from del_client.cli import main; main()"]
    result = subprocess.run(
        [*command, "generate", b"Once \xff upon", "--server", "127.0.0.1:1", "--mu", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "del-client: error: the prompt is not valid Unicode text: '\\udcff' at character 5 "
        "is a lone surrogate (bytes that were not UTF-8?)\n"
    )


def test_a_url_for_a_server_is_refused_with_what_to_write_instead(capsys):
    err = refusal(["manifest", "--server", "http://localhost:50051"], capsys)
    assert "gRPC targets take no scheme: write 'localhost:50051'" in err


def test_bench_codec_over_no_tokens_is_refused(capsys):
    assert "tokens must be >= 1, got 0" in refusal(["bench-codec", "--tokens", "0"], capsys)


def test_an_absurd_mu_is_refused_like_an_absurd_epsilon(capsys):
    shape = ["--dim", "16", "--bits", "4", "--clip", "1"]
    assert "q within float resolution of 1" in refusal(
        ["privacy", "--epsilon", "1e6", *shape], capsys
    )
    err = refusal(["privacy", "--mu", "1e9", *shape], capsys)
    assert "q within float resolution of 1 (no privacy left); ask for mu <= 125532" in err


@pytest.fixture
def terminal():
    """The writing end of a real pseudo-terminal, as `generate` sees stdout in a shell."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as stream:
        yield stream
    os.close(leader)


@pytest.fixture
def pipe():
    reader, writer = os.pipe()
    with os.fdopen(writer, "w") as stream:
        yield stream
    os.close(reader)


def test_the_prompt_is_dimmed_on_a_terminal_and_as_it_is_in_a_pipe(terminal, pipe, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert _shown("Once upon a time", terminal) == "\033[2mOnce upon a time\033[0m"
    assert _shown("Once upon a time", pipe) == "Once upon a time"
    monkeypatch.setenv("NO_COLOR", "1")
    assert _shown("Once upon a time", terminal) == "Once upon a time"
