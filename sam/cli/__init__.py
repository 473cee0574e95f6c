"""The `sam` command line. Each subcommand is a thin wrapper over a library function: `model_commands`
(train, eval, caption, ask), `probe_commands` (probe, probe-lm), `data_commands` (prepare-data,
export-corpus, data-summary, convert); `parser` builds the arguments, `common` holds what commands share.

Every error ends the command with one line naming the key, file or path and the reason: exit 2 for
bad input (config, audio, dataset files, unwritable outputs), 1 for failures; a traceback only with
--debug (`sam.cli.support`). Outputs are checked for writability before the work starts. Batch
commands (`caption`) report each bad input on its own line and go on with the rest.

This package must never hold training, evaluation or analysis logic of its own.
"""

from __future__ import annotations

from sam.cli.data_commands import cmd_cache_features, cmd_convert, cmd_data_summary, cmd_export_corpus, cmd_prepare_data
from sam.cli.model_commands import cmd_ask, cmd_caption, cmd_eval, cmd_train
from sam.cli.parser import build_parser
from sam.cli.probe_commands import cmd_probe, cmd_probe_lm
from sam.cli.support import EXIT_INPUT, run_command

EXIT_CONFIG = EXIT_INPUT


COMMANDS = {
    "prepare-data": cmd_prepare_data,
    "cache-features": cmd_cache_features,
    "export-corpus": cmd_export_corpus,
    "train": cmd_train,
    "eval": cmd_eval,
    "caption": cmd_caption,
    "ask": cmd_ask,
    "probe": cmd_probe,
    "probe-lm": cmd_probe_lm,
    "data-summary": cmd_data_summary,
    "convert": cmd_convert,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, COMMANDS[args.command], args, args.debug)
