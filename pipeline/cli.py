"""Shared command-line plumbing for jobs/*.py: ``--config FILE`` plus dotted overrides, and one
clear line (no stack trace) for bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.config import RunStopped, UserError
from pipeline.process import setup_process


def job_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help="YAML config (any fsspec URL)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser


def run_job(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's main; bad user input prints one line and exits with status 2, a run that
    stopped itself (its checkpoints intact) one line and status 1."""
    setup_process()
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: not found: {e.filename or e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
