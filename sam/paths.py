"""Paths named inside untrusted files (manifests, archives, run folders) resolved under their root.

A manifest row or archive entry is data from disk, not an instruction: its path must stay inside
the folder it is relative to. `confined` rejects absolute paths, `..` parts and symbolic links
that lead out of the root, so a crafted manifest can neither read nor write outside it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


class UnsafePathError(ValueError):
    """A path from a file on disk points outside the folder it must stay in."""


def confined(root: str | Path, relative: str) -> Path:
    """``root / relative``, resolved, when it stays inside `root`; else UnsafePathError saying why.

    Checked both on the text (absolute, drive letters, ``..`` parts, empty) and on the resolved
    path, so a symbolic link inside `root` that points elsewhere is refused as well.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePathError(f"path {relative!r}: empty or not a string")
    if "\x00" in relative:
        raise UnsafePathError(f"path {relative!r}: holds a NUL byte")
    posix, win = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or win.is_absolute() or win.drive or relative.startswith(("/", "\\")):
        raise UnsafePathError(f"path {relative!r}: absolute; only paths relative to {root} are accepted")
    if ".." in posix.parts or ".." in win.parts:
        raise UnsafePathError(f"path {relative!r}: holds '..'; only paths inside {root} are accepted")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"path {relative!r}: leads to {target} through a symbolic link, outside {root}")
    return target
