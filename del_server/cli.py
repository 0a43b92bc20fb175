"""`del-server`: serve a model, export its client bundle, train and calibrate its adapter."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from . import settings as settings_module
from .eval.cli import add_commands as add_eval_commands
from .logs import configure
from .train.cli import add_commands as add_training_commands

log = logging.getLogger("del_server")


def _serve(args: argparse.Namespace) -> None:
    settings = settings_module.resolve(args)
    configure(settings.log_level)
    log.info("settings", extra={"settings": settings.public_dict()})
    asyncio.run(_serve_async(settings))


async def _serve_async(settings) -> None:
    from .server import serve

    await serve(settings)


def _export_client_bundle(args: argparse.Namespace) -> None:
    from .bundles import client_bundle, raw_bundle
    from .models import load_model
    from .runtime import load_adapter

    settings = settings_module.resolve(args)
    loaded = load_model(settings.model, format=settings.model_format)
    bundle = (
        raw_bundle(loaded) if args.raw else client_bundle(loaded, load_adapter(settings, loaded))
    )
    path = bundle.save(args.out)
    print(f"{path}  sha256={bundle.digest}  {path.stat().st_size} bytes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="del-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve a model over gRPC (settings: flag > DEL_* env > default)"
    )
    settings_module.add_arguments(serve)
    serve.set_defaults(run=_serve)
    export = sub.add_parser("export-client-bundle", help="write the client bundle to a file")
    settings_module.add_arguments(export)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--raw", action="store_true", help="the unprojected (no privacy) table")
    export.set_defaults(run=_export_client_bundle)
    add_training_commands(sub)
    add_eval_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    args.run(args)
