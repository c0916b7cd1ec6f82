"""Command line for training outside Airflow (same code path as the DAG) and the registry.

    python -m chicago_crime.cli train --month 2018-06 [--trials N] [--timeout S]
    python -m chicago_crime.cli champion        # print the current champion (JSON)
    python -m chicago_crime.cli rollback        # move champion back to the previous one

Installed as the ``chicago-crime`` console script. Settings come from the environment / .env.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any

from chicago_crime.config import load_settings


def _month(value: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM, got {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chicago-crime", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="search, fit, evaluate, register and gate one month")
    tr.add_argument("--month", type=_month, required=True,
                    help="YYYY-MM whose ETL outputs are in the lake")
    tr.add_argument("--trials", type=int, default=None, help="search trials (SEARCH_TRIALS)")
    tr.add_argument("--timeout", type=float, default=None,
                    help="search budget in seconds (SEARCH_TIMEOUT_SECONDS)")
    sub.add_parser("champion", help="print the current champion version")
    sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    return parser


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "matplotlib", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    from chicago_crime.model import registry

    if args.command == "train":
        from chicago_crime.model.train import run_training

        _print(run_training(args.month, settings, trials=args.trials, timeout=args.timeout))
        return 0
    client = registry.client_for(settings)
    if args.command == "champion":
        info = registry.describe(client, settings.model_name, settings.champion_alias)
        if info is None:
            print(f"{settings.model_name} has no champion yet: run "
                  "`chicago-crime train --month YYYY-MM`", file=sys.stderr)
            return 1
        _print(info)
        return 0
    try:
        _print(registry.rollback(client, settings.model_name, settings.champion_alias))
    except registry.RegistryError as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
