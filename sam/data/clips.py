"""What every corpus source yields (`RawClip`), the corpus error, and the Asterisk transcript reader.

Both `sam.data.corpus` (the Debian sources and the build) and `sam.data.sources` (further packages)
build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path


class CorpusError(RuntimeError):
    """The corpus cannot be built or read; the message says what is missing and what to do."""


@dataclass
class RawClip:
    """One entry found in a source package, before decoding."""

    id: str
    source: str  # Debian package name, or "folder"
    origin: str  # where inside the package the entry lives
    data: bytes | Path
    labels: list[str]
    phrase: str  # noun phrase used in scene captions
    caption: str  # human caption / transcript / derived description
    caption_kind: str  # human | transcript | derived
    licence: str
    transcript: str | None = None


def read_transcripts(path: Path) -> dict[str, str]:
    """``name: text`` lines of an Asterisk core-sounds-<lang>.txt.gz (``;`` lines are comments)."""
    out: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            out[name.strip()] = " ".join(text.split())
    return out
