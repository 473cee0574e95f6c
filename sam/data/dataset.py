"""Torch Dataset + collate: Examples -> normalized fbank, prompt/response token ids, loss labels.

Scene examples are rendered on the fly (deterministic) or read from an optional on-disk fbank cache;
file examples are decoded with `sam.model.audio.load_audio`. Token ids and labels come from
`sam.prompt.encode_example`, so training and generation share one template. Works with DataLoader
workers (nothing unpicklable is held). Never changes an example's text or answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sam.config import AudioConfig
from sam.data.scenes import render_scene
from sam.data.types import Example
from sam.model.audio import load_audio, wave_to_features
from sam.prompt import IGNORE_INDEX, encode_example


def example_wave(ex: Example, corpus_root: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """The waveform an example refers to: a rendered scene spec, or a decoded audio file."""
    if isinstance(ex.audio, dict):
        return render_scene(ex.audio, corpus_root, sample_rate)
    return load_audio(ex.audio, sample_rate)


def audio_key(ex: Example, audio_cfg: AudioConfig) -> str:
    """Names the features of an example's audio under these front-end settings (for caching)."""
    src = json.dumps(ex.audio, sort_keys=True) if isinstance(ex.audio, dict) else str(ex.audio)
    cfg = (
        audio_cfg.sample_rate,
        audio_cfg.num_mel_bins,
        audio_cfg.target_frames,
        audio_cfg.norm_mean,
        audio_cfg.norm_std,
        getattr(audio_cfg, "window_type", "povey"),
    )
    return hashlib.sha256(f"{src}|{cfg}".encode()).hexdigest()[:24]


def feature_path(cache_dir: str | Path, key: str) -> Path:
    """Where the feature cache keeps the features named `key` (an `audio_key`)."""
    return Path(cache_dir) / f"{key}.npy"


def cached_features(
    ex: Example, audio_cfg: AudioConfig, corpus_root: str | Path, cache_dir: str | Path | None, key: str | None = None
) -> torch.Tensor:
    """The normalized fbank of an example's audio, read from `cache_dir`/<audio_key>.npy when there and
    otherwise rendered (and written there atomically: several loader workers may race on one scene)."""
    key = key or audio_key(ex, audio_cfg)
    path = feature_path(cache_dir, key) if cache_dir else None
    if path is not None and path.is_file():
        return torch.from_numpy(np.load(path))
    feats = wave_to_features(example_wave(ex, corpus_root, audio_cfg.sample_rate), audio_cfg).to(torch.float32).contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, feats.numpy())
        os.replace(tmp, path)
    return feats


class SAMDataset(Dataset):
    """Items: fbank [target_frames, mel] float32, input_ids / labels (long), pad_id, example.

    `cache_dir` (optional) stores each distinct audio's features as ``<key>.npy``; several questions
    about one scene then render it once. A small in-process LRU does the same within a worker.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        audio_cfg: AudioConfig,
        tokenizer: Any,
        corpus_root: str | Path = "data",
        cache_dir: str | Path | None = None,
        memory_items: int = 64,
    ):
        self.examples = list(examples)
        self.audio_cfg = audio_cfg
        self.tokenizer = tokenizer
        self.corpus_root = Path(corpus_root)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory_items = memory_items
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def __len__(self) -> int:
        return len(self.examples)

    def features(self, ex: Example) -> torch.Tensor:
        key = audio_key(ex, self.audio_cfg)
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        feats = cached_features(ex, self.audio_cfg, self.corpus_root, self.cache_dir, key)
        self._memory[key] = feats
        if len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return feats

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        ids, labels = encode_example(self.tokenizer, ex.instruction, ex.answer)
        return {
            "fbank": self.features(ex),
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pad_id": self.pad_id,
            "example": ex,
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fbanks; right-pad input_ids with the pad id, labels with IGNORE_INDEX; attention_mask 1 on tokens."""
    if not batch:
        raise ValueError("collate: empty batch")
    pad_id = batch[0]["pad_id"]
    length = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = b["input_ids"]
        labels[i, :n] = b["labels"]
        mask[i, :n] = 1
    return {
        "fbank": torch.stack([b["fbank"] for b in batch]).to(torch.float32),
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "examples": [b["example"] for b in batch],
    }


def _one_thread() -> None:
    torch.set_num_threads(1)  # one process per core: torch's own thread pool in each would oversubscribe them


def _cache_one(args: tuple[Example, AudioConfig, str, str]) -> None:
    cached_features(*args)


def cache_features(
    examples: Sequence[Example], audio_cfg: AudioConfig, corpus_root: str | Path, workers: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Render each distinct audio of `examples` into `corpus_root`/features (the cache training reads), in
    `workers` processes, so that concurrent runs on one machine do not render the same scenes at once.
    Audio already cached is skipped; an item that fails is reported (one line) and the rest go on.
    Returns counts: distinct, cached before, written, failed (with the first errors)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    cache_dir = Path(corpus_root) / "features"
    todo: dict[str, Example] = {}
    for ex in examples:
        todo.setdefault(audio_key(ex, audio_cfg), ex)
    distinct = len(todo)
    todo = {k: ex for k, ex in todo.items() if not feature_path(cache_dir, k).is_file()}
    failed: list[str] = []
    jobs = [(ex, audio_cfg, str(corpus_root), str(cache_dir)) for ex in todo.values()]
    # spawn, not fork: a forked copy of a process whose torch thread pools are running can deadlock.
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        futures = {pool.submit(_cache_one, job): job[0] for job in jobs}
        bar = tqdm(total=len(futures), desc="features", unit="clip", disable=not progress)
        for fut, ex in futures.items():
            try:
                fut.result()
            except Exception as err:  # a bad clip must not stop the others
                name = f"scene {ex.audio.get('id', '?')}" if isinstance(ex.audio, dict) else str(ex.audio)
                failed.append(f"{name}: {err}")
                print(f"[features] skipped {failed[-1]}", flush=True)
            bar.update()
        bar.close()
    return {
        "distinct": distinct,
        "cached_before": distinct - len(todo),
        "written": len(todo) - len(failed),
        "failed": len(failed),
        "errors": failed[:5],
    }
