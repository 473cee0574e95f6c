"""The one entry point training, evaluation and experiments use for the embedded corpus.

`build_examples(data_cfg, split, tasks)` composes the split's scenes and their instruction data,
caching the result as JSON under ``root/scenes/`` (keyed by the corpus manifest, the scene settings
and the code version), so repeated calls cost one JSON read. `corpus_texts` gathers every string
the model will read or write, for training the BPE tokenizer. Nothing here renders audio.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sam.data.corpus import manifest_hash, prepare_corpus, read_manifest
from sam.data.scenes import SPLITS, SceneComposer
from sam.data.types import TASKS, Example
from sam.prompt import PROMPT_TEMPLATE, format_prompt

SCENES_VERSION = 1  # bump when scene or question generation changes, to invalidate caches


def _split_size(data_cfg: Any, split: str) -> int:
    sizes = {"train": data_cfg.n_train, "valid": data_cfg.n_valid, "test": data_cfg.n_test}
    if split not in sizes:
        raise ValueError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    return int(sizes[split])


def composer_for(data_cfg: Any) -> SceneComposer:
    """The SceneComposer a DataConfig describes (builds the corpus first if it is missing)."""
    prepare_corpus(data_cfg)
    return SceneComposer(data_cfg.root, data_cfg.scene_seconds, data_cfg.max_events, data_cfg.background, data_cfg.seed)


def cache_key(data_cfg: Any, split: str, tasks: list[str]) -> str:
    blob = json.dumps({
        "v": SCENES_VERSION, "manifest": manifest_hash(data_cfg.root), "seed": data_cfg.seed,
        "seconds": data_cfg.scene_seconds, "max_events": data_cfg.max_events, "background": data_cfg.background,
        "split": split, "n": _split_size(data_cfg, split), "tasks": sorted(tasks),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_examples(data_cfg: Any, split: str, tasks: list[str] | tuple[str, ...]) -> list[Example]:
    """Examples of `split` (train/valid/test) for `tasks` (subset of TASKS), cached under root/scenes/."""
    tasks = list(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    prepare_corpus(data_cfg)
    n = _split_size(data_cfg, split)
    path = Path(data_cfg.root) / "scenes" / f"{split}-{cache_key(data_cfg, split, tasks)}.json"
    if path.is_file():
        return _load(path)
    composer = SceneComposer(data_cfg.root, data_cfg.scene_seconds, data_cfg.max_events, data_cfg.background, data_cfg.seed)
    specs = composer.make_split(split, n)
    examples = [ex for spec in specs for ex in composer.scene_examples(spec, tasks)]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**dataclasses.asdict(e), "audio": e.audio["id"]} for e in examples]  # specs stored once, not per question
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"scenes": {s["id"]: s for s in specs}, "examples": rows}))
    os.replace(tmp, path)  # atomic: concurrent builders never read half a file
    return _load(path)


def _load(path: Path) -> list[Example]:
    data = json.loads(path.read_text())
    scenes = data["scenes"]
    return [Example(**{**d, "audio": scenes[d["audio"]]}) for d in data["examples"]]


def corpus_texts(data_cfg: Any) -> list[str]:
    """Every prompt, answer, caption and transcript of all splits and tasks (BPE training text)."""
    texts = [PROMPT_TEMPLATE]
    for split in SPLITS:
        for ex in build_examples(data_cfg, split, list(TASKS)):
            texts.append(format_prompt(ex.instruction))
            texts.append(ex.answer)
    for row in read_manifest(data_cfg.root):
        texts.append(row["caption"])
        texts.append(row["phrase"])
    return texts
