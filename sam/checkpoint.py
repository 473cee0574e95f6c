"""Crash-safe training checkpoints: atomic files, a `latest` pointer, and a loader that never
returns a half-written state.

A checkpoint is one ``step-XXXXXXXX.pt`` file inside a folder, holding only tensors and plain
containers (dicts, lists, numbers, strings) so that it loads with ``weights_only=True``.
Writes go to a temporary name in the same folder, are flushed to disk, then renamed over the final
name (`os.replace` is atomic on POSIX); the folder's ``latest`` pointer is rewritten the same way
and only after the checkpoint itself is in place. A process killed at any instant therefore leaves
either the previous checkpoint or the new one as ``latest``, never a truncated file; leftover
temporary files are ignored by the loader and removed by the next writer.

Whole directories (a stage's final model) are published the same way: built under a temporary
name, then renamed.

This module must never delete the checkpoint that ``latest`` points to, and must never load a
temporary file.

Fault injection for tests: when the environment variable ``SAM_CHECKPOINT_FAULT`` holds a glob
pattern that matches a checkpoint path being written, the writer stops halfway through the
temporary file for ``SAM_CHECKPOINT_FAULT_SECONDS`` (default 600) seconds, so a test can kill the
process in the middle of a write.
"""

from __future__ import annotations

import fnmatch
import io
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d{8})\.pt$")


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fault_pause(path: Path) -> float:
    pattern = os.environ.get("SAM_CHECKPOINT_FAULT", "")
    if pattern and fnmatch.fnmatch(str(path), pattern):
        return float(os.environ.get("SAM_CHECKPOINT_FAULT_SECONDS", "600"))
    return 0.0


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    pause = _fault_pause(path)
    try:
        with open(tmp, "wb") as f:
            if pause:
                half = len(data) // 2
                f.write(data[:half])
                f.flush()
                os.fsync(f.fileno())
                time.sleep(pause)
                f.write(data[half:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a write error (a full disk) names no file by itself: name the target
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    _fsync_dir(path.parent)


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write `state` as the checkpoint of `step`, then point ``latest`` at it.

    Older checkpoints beyond the newest `keep` and stale temporary files are removed afterwards.
    """
    folder = Path(folder)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = checkpoint_path(folder, step)
    atomic_write_bytes(path, buf.getvalue())
    # The pointer moves only after the file it names is complete.
    atomic_write_bytes(folder / LATEST, path.name.encode())
    _prune(folder, keep, protect=path.name)
    return path


def _prune(folder: Path, keep: int, protect: str) -> None:
    steps = sorted(_step_files(folder), reverse=True)
    for _, p in steps[max(keep, 1) :]:
        if p.name != protect:
            p.unlink(missing_ok=True)
    for p in folder.glob(".*.tmp-*"):
        # Another live writer never shares this folder (one trainer per stage holds its lock).
        if not p.name.endswith(f".tmp-{os.getpid()}"):
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)


def _step_files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _STEP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return out


class CheckpointError(RuntimeError):
    """No checkpoint of a folder can be loaded safely, and at least one was refused as unsafe."""


def _why_unloadable(e: BaseException) -> tuple[str, bool]:
    """(one-line reason, whether the file was refused as unsafe rather than damaged)."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(e, pickle.UnpicklingError) and found:
        return (
            f"holds Python objects ({found.group(1)}) that cannot be loaded safely; only tensors and plain "
            "containers are accepted (a checkpoint of an older format, or not one written by sam)"
        ), True
    first = next((line.strip() for line in text.splitlines() if line.strip() and "Weights only load failed" not in line), "")
    return f"not a readable checkpoint, truncated or damaged ({type(e).__name__}{': ' + first[:120] if first else ''})", False


def load_latest(folder: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest loadable checkpoint in `folder`, or None if there is none.

    Follows ``latest`` first; if that file is missing, damaged or unsafe, falls back to the other
    ``step-*.pt`` files, newest first, saying on stderr which file was skipped and why. Temporary
    files are never considered. Files are untrusted: they load with ``weights_only=True``, so a
    planted file runs no code. When every candidate fails and one was refused as unsafe, raises
    CheckpointError naming it (starting the stage afresh would silently discard its progress).
    """
    folder = Path(folder)
    candidates: list[Path] = []
    pointer = folder / LATEST
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if _STEP_RE.match(name):
            candidates.append(folder / name)
    candidates += [p for _, p in sorted(_step_files(folder), reverse=True) if p not in candidates]
    unsafe: list[str] = []
    for path in candidates:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            continue  # `latest` named a file that was pruned or never written
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            why, refused = _why_unloadable(e)
        else:
            if isinstance(state, dict):
                return state
            why, refused = f"holds a {type(state).__name__}, not a checkpoint dict", False
        if refused:
            unsafe.append(f"{path}: {why}")
        print(f"sam: skipped checkpoint {path}: {why}; trying an older one", file=sys.stderr)
    if unsafe:
        raise CheckpointError(f"{unsafe[0]}; move it away to train this stage from its start")
    return None


def publish_dir(final: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a directory with `build(tmp_dir)` and rename it to `final` in one step.

    `final` must not exist yet; a crash leaves only a temporary directory that `cleanup_tmp` removes.
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite a published directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    build(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def cleanup_tmp(folder: str | Path) -> None:
    """Remove temporary files and directories left in `folder` by killed writers."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
