"""The one entry point training, evaluation and experiments use for their examples.

`build_examples(data_cfg, split, tasks)` composes the split's scenes and their instruction data,
caching the result as JSON under ``root/scenes/`` (keyed by the corpus manifest, the scene settings
and the code version), so repeated calls cost one JSON read. With ``source: openaqa`` it reads
instruction JSON in LTU/OpenAQA's format instead (`openaqa_examples`). `corpus_texts` gathers every
string the model will read or write, for training the BPE tokenizer. Nothing here renders audio.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
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
    blob = json.dumps(
        {
            "v": SCENES_VERSION,
            "manifest": manifest_hash(data_cfg.root),
            "seed": data_cfg.seed,
            "seconds": data_cfg.scene_seconds,
            "max_events": data_cfg.max_events,
            "background": data_cfg.background,
            "split": split,
            "n": _split_size(data_cfg, split),
            "tasks": sorted(tasks),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_examples(data_cfg: Any, split: str, tasks: list[str] | tuple[str, ...]) -> list[Example]:
    """Examples of `split` (train/valid/test) for `tasks` (subset of TASKS), cached under root/scenes/."""
    tasks = list(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    if getattr(data_cfg, "source", "debian") == "openaqa":
        return openaqa_examples(data_cfg, split, tasks)
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


# --------------------------------------------------------------------------------------------
# source: openaqa


def openaqa_examples(data_cfg: Any, split: str, tasks: list[str]) -> list[Example]:
    """The `split` of LTU/OpenAQA-format instruction JSON, restricted to `tasks`.

    train and valid come from ``data.json_train``, split by audio file (a file's questions all land
    in one split): a file is held out for valid when a hash of its name falls in the first
    ``valid_permille`` of 1000 buckets, so the split is deterministic and does not depend on the
    JSON's order. test is all of ``data.json_test``. Rows the reader cannot use (missing fields or
    audio) are reported on stderr once per file and skipped."""
    from sam.config import ConfigError

    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    key = "json_test" if split == "test" else "json_train"
    path = getattr(data_cfg, key)
    if not path:
        raise ConfigError(f"data.{key}: not set; source=openaqa reads its {split} split from an LTU/OpenAQA-format JSON file")
    permille = data_cfg.valid_permille
    if not isinstance(permille, int) or not 0 <= permille <= 1000:
        raise ConfigError(f"data.valid_permille: must be an integer from 0 to 1000, got {permille!r}")
    examples = _read_openaqa_cached(str(Path(path).resolve()), _mtime(path), data_cfg.audio_dir)
    if split != "test":
        examples = tuple(e for e in examples if _held_out(str(e.audio), permille) == (split == "valid"))
    chosen = [e for e in examples if e.task in tasks]
    if not chosen and split == "train":
        raise ConfigError(
            f"data.{key}: {path} has no usable {split} examples for tasks {tasks} (its tasks: "
            f"{sorted({e.task for e in examples}) or 'none'})"
        )
    return chosen


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0  # the reader then names the missing file


@functools.lru_cache(maxsize=4)
def _read_openaqa_cached(path: str, mtime: float, audio_dir: str) -> tuple[Example, ...]:
    """One read (and one report) per file version and process: every stage asks for its splits."""
    from sam.data.readers import read_openaqa

    examples, report = read_openaqa(path, audio_dir or None)
    if report.bad:
        print(str(report), file=sys.stderr, flush=True)
    return tuple(examples)


def _held_out(audio: str, permille: int) -> bool:
    """Whether an audio file belongs to the valid split (a hash of its file name, not its folder)."""
    bucket = int(hashlib.sha256(Path(audio).name.encode()).hexdigest()[:8], 16) % 1000
    return bucket < permille


def corpus_texts(data_cfg: Any) -> list[str]:
    """Every prompt, answer, caption and transcript of all splits and tasks (BPE training text).
    For source=openaqa: the prompts and answers of its train/valid JSON only (a real test set's
    text stays unseen, even by the tokenizer)."""
    texts = [PROMPT_TEMPLATE]
    openaqa = getattr(data_cfg, "source", "debian") == "openaqa"
    for split in SPLITS:
        if openaqa and split == "test":
            continue
        for ex in build_examples(data_cfg, split, list(TASKS)):
            texts.append(format_prompt(ex.instruction))
            texts.append(ex.answer)
    if openaqa:
        return texts
    for row in read_manifest(data_cfg.root):
        texts.append(row["caption"])
        texts.append(row["phrase"])
    return texts
