"""Training throughput of SAM: audio clips/s, LM tokens/s and MFU against the measured matmul peak.

Times `sam.train.train_step` (the trainer's own step: autocast, loss weighting, clipping, AdamW)
on real corpus batches collated once up front, so data loading is not measured. FLOPs per step are
counted with `torch.utils.flop_counter.FlopCounterMode` on the pure-PyTorch kernel path (the
Triton SSD kernels are custom ops the counter cannot see); the same step is then timed on the
fastest path. The peak is a large bf16 matmul (fp32 on CPU) measured in the same process.

    python benchmarks/bench_train.py                                   # cpu preset, 2 cores
    python benchmarks/bench_train.py --device cuda --lm 780m --encoder base --preset gpu

Writes benchmarks/results/<name>.json and .md. It must never report a number it did not measure.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam.config import EncoderConfig, ExperimentConfig, apply_overrides, preset  # noqa: E402
from sam.train import Dist, is_encoder_stage, lm_tokens, make_optimizer, seed_all, train_step  # noqa: E402


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n x n matmul over `repeats` timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    from sam.lm import named_config

    exp = preset(args.preset, args.lm if args.lm in ("small", "medium", "large") else "small")
    if args.lm not in ("small", "medium", "large"):
        exp.model.lm = named_config(args.lm)
    if args.encoder:
        exp.model.encoder = dataclasses.replace(EncoderConfig(size=args.encoder), norm_first=exp.model.encoder.norm_first)
    # Throughput does not depend on how many scenes exist: compose only what the batches need
    # (the BPE is trained on these scenes' text too).
    exp.data.n_train, exp.data.n_valid, exp.data.n_test = 256, 16, 16
    return apply_overrides(exp, args.overrides)


def real_batches(exp: ExperimentConfig, tokenizer: Any, tasks: list[str], batch_size: int, n: int) -> list[dict[str, Any]]:
    from sam.data import build_examples
    from sam.data.dataset import SAMDataset, collate

    examples = build_examples(exp.data, "train", tasks)[: batch_size * n]
    if len(examples) < batch_size * n:
        raise SystemExit(f"only {len(examples)} training examples for tasks {tasks}; lower --batch-size or --batches")
    ds = SAMDataset(examples, exp.model.audio, tokenizer, exp.data.root)
    items = [ds[i] for i in range(len(ds))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def step_flops(step: Any) -> int:
    """FLOPs of one call of `step()` on the pure-PyTorch kernel path."""
    from torch.utils.flop_counter import FlopCounterMode

    from sam.mamba2 import Mamba2Mixer

    previous = getattr(Mamba2Mixer, "kernels", None)
    Mamba2Mixer.kernels = "torch"
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        Mamba2Mixer.kernels = previous
    return int(counter.get_total_flops())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "triton", "mamba-ssm", "causal-conv1d"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    ap.add_argument("--lm", default="small", help="preset LM size (small|medium|large) or a published shape (130m, 780m, 2.7b)")
    ap.add_argument("--encoder", default="", help="encoder size (tiny|small|base); default: the preset's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stage", default="stage4", help="which stage of the preset's curriculum to time (trainable groups + tasks)")
    ap.add_argument("--batch-size", type=int, default=0, help="clips per step (default: the stage's)")
    ap.add_argument("--batches", type=int, default=4, help="distinct real batches cycled through")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation, allocator)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--name", default="", help="result file name (default: bench_train_<preset>_<lm>_<device>)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--save-batches", default="", help="write the tokenizer + collated batches to this folder and stop (for a machine without the corpus)")
    ap.add_argument("--load-batches", default="", help="read the tokenizer + batches written by --save-batches instead of the corpus")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    exp = build_config(args)
    stage_index = next((i for i, s in enumerate(exp.train.stages) if s.name == args.stage), None)
    if stage_index is None:
        raise SystemExit(f"--stage {args.stage}: not in the curriculum ({[s.name for s in exp.train.stages]})")
    stage = exp.train.stages[stage_index]
    if is_encoder_stage(stage):
        raise SystemExit("benchmark an LM stage (stage1..stage5); the encoder-only stage has no LM tokens")
    batch_size = args.batch_size or stage.batch_size

    from sam.model import SAM
    from sam.runs import get_tokenizer
    from sam.tokenizer import load_tokenizer

    if args.load_batches:
        tokenizer = load_tokenizer(Path(args.load_batches) / "tokenizer")
        host = torch.load(Path(args.load_batches) / "batches.pt")
        if args.batch_size:
            host = [{k: v[: args.batch_size] for k, v in b.items()} for b in host]
    else:
        tokenizer = get_tokenizer(exp, REPO / "runs")
        host = [{k: v for k, v in b.items() if torch.is_tensor(v)} for b in real_batches(exp, tokenizer, list(stage.tasks), batch_size, args.batches)]
    if args.save_batches:
        folder = Path(args.save_batches)
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        torch.save(host, folder / "batches.pt")
        print(f"wrote {len(host)} batches of {batch_size} clips and the tokenizer to {folder}")
        return 0
    seed_all(0)
    model = SAM(exp.model, tokenizer).to(device)
    model.set_trainable(list(stage.trainable))
    model.train()
    opt, sched = make_optimizer(model, stage, exp.train, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    net = torch.compile(model) if args.compile else model
    # Host batches as a DataLoader hands them over (the step moves them); only tensors, so that
    # torch.compile does not guard on Example objects.
    batches = [{k: v.pin_memory() if device.type == "cuda" else v for k, v in b.items()} for b in host]
    batch_size = int(batches[0]["fbank"].shape[0])
    dist = Dist(device=device)
    counted: list[int] = []

    def step(i: int) -> tuple[float, float, int]:
        return train_step(net, [batches[i % len(batches)]], opt, sched, trainable, exp.train, dist, False, lm_tokens)

    # FLOPs are counted on the PyTorch path, whose quadratic chunk tensors would not fit at full
    # batch on big shapes: count one clip of the (equal-length, padded) batch and scale.
    one = [{k: v[:1] for k, v in batches[0].items()}]
    flops = batch_size * step_flops(lambda: counted.append(
        train_step(net, one, opt, sched, trainable, exp.train, dist, False, lm_tokens)[2]))
    for i in range(args.warmup):
        step(i)
    times, tokens = [], 0
    for i in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        tokens += step(i)[2]
        _sync(device)
        times.append(time.perf_counter() - t0)
    # The fastest step is the machine's capability; the median shows what sharing the CPU costs.
    seconds = min(times)
    median = sorted(times)[len(times) // 2]

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024, 10 if device.type == "cuda" else 5)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in trainable)
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset, "lm": args.lm, "encoder": exp.model.encoder.size, "stage": stage.name,
        "trainable_groups": stage.trainable, "tasks": stage.tasks, "layout": exp.model.connector.layout,
        "precision": "bf16 autocast" if device.type == "cuda" or exp.train.precision == "bf16" else "fp32",
        "compile": args.compile, "batch_size": batch_size, "steps_timed": args.steps,
        "params": n_params, "trainable_params": n_train,
        "seconds_per_step": seconds,
        "seconds_per_step_median": median,
        "clips_per_s": batch_size / seconds,
        "tokens_per_s": tokens / args.steps / seconds,
        "tokens_per_step": tokens / args.steps,
        "flops_per_step": flops,
        "achieved_tflops": flops / seconds / 1e12,
        "peak_tflops": peak / 1e12,
        "peak_kind": f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul, measured here",
        "mfu": flops / seconds / peak,
        "device": device_name(device),
        "load_average_1min": os.getloadavg()[0],  # other processes on the machine slow every number above
        "versions": versions(),
        "kernels": _kernel_path(device),
    }
    name = args.name or f"bench_train_{args.preset}_{args.lm}_{device.type}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _kernel_path(device: torch.device) -> str:
    if device.type != "cuda":
        return "pure PyTorch (sam.ssd)"
    from sam.mamba2 import _kernels

    k = _kernels()
    return "mamba_ssm Triton SSD kernels" if getattr(k, "chunk_scan", None) is not None else f"pure PyTorch ({getattr(k, 'error', '')})"


def key_value_markdown(title: str, rows: list[tuple[str, str]]) -> str:
    """A benchmark result as a Markdown title + two-column table (shared by the benchmark scripts)."""
    return f"# {title}\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def _markdown(r: dict[str, Any]) -> str:
    rows = [
        ("device", f"{r['device']} (1-min load average {r['load_average_1min']:.1f})"), ("model", f"LM {r['lm']}, encoder {r['encoder']}, layout {r['layout']}"),
        ("stage", f"{r['stage']} (trains {', '.join(r['trainable_groups'])}; tasks {', '.join(r['tasks'])})"),
        ("precision / compile", f"{r['precision']} / {r['compile']}"), ("kernels", r["kernels"]),
        ("params (trainable)", f"{r['params'] / 1e6:.1f} M ({r['trainable_params'] / 1e6:.1f} M)"),
        ("batch", f"{r['batch_size']} clips, {r['tokens_per_step']:.0f} LM tokens"),
        ("step time (fastest / median)", f"{r['seconds_per_step'] * 1e3:.1f} / {r['seconds_per_step_median'] * 1e3:.1f} ms"),
        ("throughput (fastest step)", f"{r['clips_per_s']:.2f} clips/s, {r['tokens_per_s']:.0f} tokens/s"),
        ("FLOPs per step", f"{r['flops_per_step'] / 1e12:.3f} TFLOP (FlopCounterMode, PyTorch path)"),
        ("achieved / peak", f"{r['achieved_tflops']:.2f} / {r['peak_tflops']:.1f} TFLOP/s ({r['peak_kind']})"),
        ("MFU", f"{100 * r['mfu']:.1f} %"),
        ("versions", ", ".join(f"{k} {v}" for k, v in r["versions"].items())),
    ]
    return key_value_markdown("Training throughput", rows)


if __name__ == "__main__":
    sys.exit(main())
