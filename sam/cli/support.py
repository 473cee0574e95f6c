"""How the `sam` command ends: one line per error, exit codes, and output checks done up front.

Every error prints as ``sam <cmd>: error: <path or field>: <reason>`` on one line. Exit 2 means the
input was bad (a config key, an audio or dataset file, an output path that cannot be written),
exit 1 that the work failed (a damaged corpus or checkpoint, a full disk, anything unexpected).
A traceback appears only with ``--debug``.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam.config import ConfigError

EXIT_INPUT = 2
EXIT_FAILURE = 1


def _input_errors() -> tuple[type[BaseException], ...]:
    from sam.data.readers import DatasetError
    from sam.model.audio import AudioError
    from sam.model.encoder import EncoderCheckpointError
    from sam.model.lm import CheckpointError as LMCheckpointError
    from sam.paths import UnsafePathError
    from sam.tokenizer import TokenizerError

    return ConfigError, AudioError, DatasetError, UnsafePathError, TokenizerError, LMCheckpointError, EncoderCheckpointError


def _failure_errors() -> tuple[type[BaseException], ...]:
    from sam.checkpoint import CheckpointError
    from sam.data.corpus import CorpusError

    return CorpusError, CheckpointError


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe_os_error(e: OSError) -> str:
    """`path: reason` for an OSError, naming the path whenever the system gave one."""
    where = e.filename if e.filename is not None else "(no path reported)"
    reason = e.strerror or _first_line(str(e)) or type(e).__name__
    if e.errno == errno.ENOSPC:
        reason += "; free space on that disk or write elsewhere"
    return f"{where}: {reason}"


def run_command(command: str, fn: Callable[[Any], int], args: Any, debug: bool = False) -> int:
    """Run one subcommand; map its errors to one stderr line and an exit code."""
    try:
        return fn(args)
    except KeyboardInterrupt:
        print(f"sam {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        if isinstance(e, _input_errors()):
            code, text = EXIT_INPUT, _first_line(str(e))
        elif isinstance(e, _failure_errors()):
            code, text = EXIT_FAILURE, _first_line(str(e))
        elif isinstance(e, OSError):
            code, text = EXIT_FAILURE, describe_os_error(e)
        else:
            code, text = EXIT_FAILURE, f"{type(e).__name__}: {_first_line(str(e))} (run with --debug for the traceback)"
        print(f"sam {command}: error: {text}", file=sys.stderr)
        return code


def check_writable(path: str | Path, flag: str, directory: bool = False) -> Path:
    """Make sure `path` (a file, or with `directory` a folder) can be written before any work starts.

    Creates missing parent folders and writes then removes a probe file beside the target, so a
    read-only or missing location fails in the first second with ConfigError naming `flag`.
    """
    path = Path(path)
    folder = path if directory else path.parent
    if not directory and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory, expected a file name")
    if directory and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sam-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        if not directory and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "file is not writable", str(path))
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot be written ({e.strerror or e})") from None
    return path
