"""Answering audio files in batches with bounded memory (`sam caption`, `sam ask`).

Files are decoded a batch at a time, each only as far as the model reads it (`audio.target_frames`
frames), so memory depends on the batch size and the model's clip length, never on how many files
there are or how long they are. Bad files are reported on stderr and skipped; the rest go on.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from sam.config import ConfigError
from sam.model.audio import AudioError, load_audio, samples_for_frames
from sam.progress import Progress

_BREAKS = re.compile(r"[\s\x00-\x1f\x7f]+")


def one_line(text: str) -> str:
    """`text` with line breaks, tabs and other control characters folded to single spaces, so a
    ``name<TAB>answer`` row stays one row."""
    return _BREAKS.sub(" ", text).strip()


def check_request(prompt: str, max_new_tokens: int, field: str, batch_size: int = 1) -> None:
    """ConfigError for a request that cannot give a meaningful answer, before the model loads."""
    if not prompt.strip():
        raise ConfigError(f"{field}: empty; ask a question or give an instruction")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: expected >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected >= 1, got {batch_size}")


def answer_files(
    model: Any, paths: Sequence[str], prompt: str, max_new_tokens: int, batch_size: int, what: str = "answer"
) -> Iterator[tuple[str, str | None]]:
    """(path, answer) per file in order; answer None for a file that was reported and skipped."""
    audio = model.config.audio
    keep = samples_for_frames(audio.target_frames, audio.sample_rate)
    shortest = samples_for_frames(1, audio.sample_rate)
    progress = Progress(what, len(paths), unit="files", enabled=len(paths) > batch_size)
    for start in range(0, len(paths), batch_size):
        names, waves, results = [], [], {}
        for path in paths[start : start + batch_size]:
            try:
                wave = load_audio(path, audio.sample_rate, max_samples=keep)
                if wave.size < shortest:
                    raise AudioError(f"{path}: {wave.size / audio.sample_rate:.3f} s is shorter than one 25 ms fbank window")
            except AudioError as e:
                print(f"sam: skipped {e}", file=sys.stderr)
                results[path] = None
                continue
            names.append(path)
            waves.append(wave)
        if waves:
            results.update(zip(names, model.generate(waves, [prompt] * len(waves), max_new_tokens=max_new_tokens)))
        for path in paths[start : start + batch_size]:
            yield path, results[path]
        progress.update(len(paths[start : start + batch_size]))
    progress.close()
