"""The `sam` command line. Each subcommand is a thin wrapper over a library function."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam", description="SAM: Mamba-2 audio-language model toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-data", help="extract the real-audio corpus from the Debian sound packages")
    p.add_argument("--root", default="data", help="output folder (default: data)")
    args = parser.parse_args(argv)
    if args.command == "prepare-data":
        from sam.data.corpus import prepare_corpus

        prepare_corpus(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
