"""Data pipeline speed: corpus preparation time, scene rendering + fbank throughput, and whether the
pipeline keeps the cpu preset's training step fed (the ratio of scenes/s produced to scenes/s consumed).

All numbers are measured in this one process on this machine (2 CPU cores by default):

    python benchmarks/bench_data.py              # cpu preset
    python benchmarks/bench_data.py --scenes 32  # quicker

Writes benchmarks/results/data_<preset>.json and .md. It never reports a number it did not measure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam.config import preset  # noqa: E402
from sam.data import build_examples  # noqa: E402
from sam.data.corpus import prepare_corpus, read_manifest  # noqa: E402
from sam.data.dataset import SAMDataset, collate  # noqa: E402
from sam.data.scenes import SceneComposer, render_scene  # noqa: E402
from sam.model.audio import wave_to_features  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def train_step_seconds(exp, stage_name: str, batch: dict, tokenizer, steps: int) -> float:
    """Seconds per optimizer step of the preset's `stage_name`, on one real collated batch."""
    from sam.model import SAM
    from sam.train import Dist, make_optimizer, seed_all, train_step

    stage = next(s for s in exp.train.stages if s.name == stage_name)
    seed_all(0)
    model = SAM(exp.model, tokenizer)
    model.set_trainable(list(stage.trainable))
    model.train()
    opt, sched = make_optimizer(model, stage, exp.train, torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    dist = Dist(device=torch.device("cpu"))
    train_step(model, [batch], opt, sched, trainable, exp.train, dist, False)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, [batch], opt, sched, trainable, exp.train, dist, False)
    return (time.perf_counter() - t) / steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--scenes", type=int, default=64, help="scenes rendered per throughput measurement")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--stage", default="stage4")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (for the feed ratio)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    exp = preset(args.preset)
    load = os.getloadavg()[0]  # the cores may be shared: say how busy they were
    data = exp.data
    data.root = str(REPO / "data")
    prepare_corpus(data.root, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        prep_s, _ = timed(lambda: prepare_corpus(tmp, force=True, progress=False))
        clips = len(read_manifest(tmp))
        cold = exp.data.__class__(**{**exp.data.__dict__, "root": tmp})
        build_s, train_examples = timed(lambda: build_examples(cold, "train", ["classification", "closed", "open", "caption", "reasoning"]))
    warm_s, _ = timed(lambda: build_examples(data, "train", ["classification"]))

    composer = SceneComposer(data.root, data.scene_seconds, data.max_events, data.background, data.seed)
    specs = composer.make_split("train", args.scenes)
    render_s, waves = timed(lambda: [render_scene(s, data.root) for s in specs])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker; small FFTs lose badly to thread contention
    fbank_s, _ = timed(lambda: [wave_to_features(w, exp.model.audio) for w in waves])
    torch.set_num_threads(threads)

    from sam.train.runs import get_tokenizer

    tokenizer = get_tokenizer(exp, REPO / "runs")
    stage = next(s for s in exp.train.stages if s.name == args.stage)
    examples = build_examples(data, "train", list(stage.tasks))
    seen, distinct = set(), []
    for ex in examples:  # one example per scene: every item renders a new scene (no cache help)
        if ex.audio["id"] not in seen:
            seen.add(ex.audio["id"])
            distinct.append(ex)
    ds = SAMDataset(distinct[: args.scenes], exp.model.audio, tokenizer, data.root)
    loader = DataLoader(ds, batch_size=stage.batch_size, collate_fn=collate, num_workers=args.workers, persistent_workers=False)
    loader_s, batches = timed(lambda: list(loader))
    step_s = train_step_seconds(exp, args.stage, batches[0], tokenizer, args.steps)

    fed = args.scenes / loader_s
    consumed = stage.batch_size / step_s
    result = {
        "preset": args.preset,
        "device": f"cpu ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})",
        "load_average_1min_at_start": round(load, 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: importlib.metadata.version(p) for p in ("torch", "numpy", "scipy", "soundfile")},
        "corpus_clips": clips,
        "corpus_prepare_s": round(prep_s, 2),
        "build_examples_cold_s": round(build_s, 2),
        "build_examples_cold_examples": len(train_examples),
        "build_examples_cached_s": round(warm_s, 3),
        "scene_seconds": data.scene_seconds,
        "scenes": args.scenes,
        "render_scenes_per_s": round(args.scenes / render_s, 1),
        "render_plus_fbank_scenes_per_s_1_thread": round(args.scenes / (render_s + fbank_s), 1),
        "loader_workers": args.workers,
        "loader_batch_size": stage.batch_size,
        "loader_scenes_per_s": round(fed, 1),
        "train_stage": args.stage,
        "train_step_s": round(step_s, 3),
        "train_scenes_per_s": round(consumed, 1),
        "feed_ratio": round(fed / consumed, 2),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"data_{args.preset}.json").write_text(json.dumps(result, indent=1))
    md = [f"# Data pipeline speed ({args.preset} preset, {result['device']})", "", "| measurement | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in result.items() if k not in ("versions",)]
    md += [
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "feed_ratio = scenes/s the DataLoader produces (rendering + fbank + tokenizing, "
        f"{args.workers} workers) / scenes/s one training step of {args.stage} consumes; > 1 means the step is kept fed. "
        "Both measured side by side in this run, sharing the same CPU cores.",
    ]
    (out / f"data_{args.preset}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
