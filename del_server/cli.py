"""`del-server`: serve a model, export its client bundle, train and calibrate its adapter.

An operator's mistake (a setting out of range, a file or model that is not there, a port in
use, training text too short for the run) ends the command with one line on stderr and exit
status 2. `serve` and `export-client-bundle` find it before torch is imported and the model
loads, in a second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from . import settings as settings_module
from .errors import InputError
from .logs import configure
from .models import ModelSourceError, check_source

log = logging.getLogger("del_server")
EXIT_OPERATOR_ERROR = 2  # argparse's own status for a bad command line
OWN_COMMANDS = ("serve", "export-client-bundle")


def reproducible_command(argv: list[str] | None = None) -> str:
    """The command line a report says reproduces its run: as typed, less `--resume` (resuming
    is how a stopped run was finished, not part of what it computed)."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["del-server", *(arg for arg in argv if arg != "--resume")])


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: the usage of `serve` alone fills a screen."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_OPERATOR_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _checked_settings(args: argparse.Namespace, *, ports: bool) -> settings_module.Settings:
    """The settings, once what they name is known to be there: files, free ports, the model."""
    settings = settings_module.resolve(args)
    settings_module.check_files(settings)
    if ports:
        settings_module.check_ports(settings)
    check_source(settings.model)
    return settings


def _serve(args: argparse.Namespace) -> None:
    settings = _checked_settings(args, ports=True)
    configure(settings.log_level)
    log.info("settings", extra={"settings": settings.public_dict()})
    asyncio.run(_serve_async(settings))


async def _serve_async(settings) -> None:
    from .server import serve

    await serve(settings)


def _export_client_bundle(args: argparse.Namespace) -> None:
    settings = _checked_settings(args, ports=False)  # before torch is imported
    from .bundles import client_bundle, raw_bundle
    from .models import load_model
    from .runtime import load_adapter

    loaded = load_model(settings.model, format=settings.model_format)
    bundle = (
        raw_bundle(loaded) if args.raw else client_bundle(loaded, load_adapter(settings, loaded))
    )
    path = bundle.save(args.out)
    print(f"{path}  sha256={bundle.digest}  {path.stat().st_size} bytes")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; for one of OWN_COMMANDS, only this module's.

    Registering `train`, `calibrate` and `eval` imports torch and the attacks (seconds to
    tens of seconds): a server that answers a mistake at once does without them.
    """
    parser = Parser(
        prog="del-server",
        description=__doc__.splitlines()[0],
        epilog="`del-server COMMAND --help` lists a command's flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        usage="%(prog)s [--model PATH_OR_HUB_ID] [--adapter DIR] [--port PORT] [OPTIONS]",
        help="serve a model over gRPC (settings: flag > DEL_* env > default)",
        description="Serve a model over gRPC. Every flag also reads DEL_<NAME> from the "
        "environment (--max-running: DEL_MAX_RUNNING); a flag wins over its variable.",
        epilog=settings_module.environment_only_help(),
    )
    settings_module.add_arguments(serve)
    serve.set_defaults(run=_serve)
    export = sub.add_parser(
        "export-client-bundle",
        usage="%(prog)s --out FILE [--raw] [--model PATH_OR_HUB_ID] [--adapter DIR] [OPTIONS]",
        help="write the client bundle to a file",
        description="Write the client bundle the server would publish (tokenizer, projected "
        "table, clip) to a file; the server's flags choose the model and adapter.",
    )
    settings_module.add_arguments(export)
    export.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    export.add_argument("--raw", action="store_true", help="the unprojected (no privacy) table")
    export.set_defaults(run=_export_client_bundle)
    if command not in OWN_COMMANDS:
        from .eval.cli import add_commands as add_eval_commands
        from .train.cli import add_commands as add_training_commands

        add_training_commands(sub)
        add_eval_commands(sub)
    return parser


def _one_line(error: settings_module.SettingError | ModelSourceError | InputError) -> str:
    """The error as an operator reads it: settings named by their flags."""
    if isinstance(error, settings_module.SettingError):
        return error.for_operator()
    if isinstance(error, ModelSourceError):
        return f"--model {error}"
    return str(error)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = sys.argv[1:] if argv is None else argv
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        args.run(args)
    except (settings_module.SettingError, ModelSourceError, InputError) as error:
        print(f"del-server: error: {_one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_OPERATOR_ERROR)
