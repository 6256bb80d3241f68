"""`python -m serving [serve] [flags]` runs the server (flags default to the pod contract's environment);
`python -m serving build ...` builds the server images (serving/build.py, when present)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import List, Optional

from serving.config import ConfigError, Settings, add_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="The modelfleet model server. With no command, `serve`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,build}")
    serve = sub.add_parser("serve", help="serve the assigned models (the default command)",
                           description="Serve models from a store. Every flag defaults to its environment variable "
                                       "(the pod contract), then to a built-in default.")
    add_arguments(serve)
    serve.set_defaults(func=run_serve)
    build = _build_module()
    if build is not None:
        build.add_build_parser(sub)
    return parser


def _build_module() -> Optional[ModuleType]:
    """serving.build, imported only when the CLI runs, or None where this copy has no build step."""
    try:
        return importlib.import_module("serving.build")
    except ModuleNotFoundError as exc:
        if exc.name == "serving.build":
            return None
        raise


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_sources(args, os.environ)
    except ConfigError as exc:
        print(f"python -m serving: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # One intra-op thread per inference thread (NOTES.md), and no tokenizer thread pool competing with them:
    # set before torch and tokenizers start their pools.
    if settings.processor == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from serving.server import serve

    return serve(settings)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = {"serve", "build"} if _build_module() is not None else {"serve"}
    if argv and argv[0] == "build" and "build" not in commands:
        print("python -m serving: error: the build command is not available: serving/build.py is missing from this copy",
              file=sys.stderr)
        return 2
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
