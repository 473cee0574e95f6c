"""CPU speed and memory of MambaLM's training step against transformers' Mamba2 (torch path).

Both models hold the same weights (ours is saved in the Hugging Face layout and loaded by
`Mamba2ForCausalLM`), and their logits are checked to agree before anything is timed. One step is
forward + next-token cross-entropy + backward over [batch, tokens]; the two models are timed in
alternation in one process and medians are reported, so load from other processes hits both alike.
Memory is the bytes autograd saves for backward (activation memory, counted exactly through
saved-tensor hooks, each storage once) plus the process peak RSS.

    python benchmarks/bench_lm_cpu.py                 # d_model 256, 4 layers, 1024 tokens, 1 and 2 threads
    python benchmarks/bench_lm_cpu.py --threads 2 --repeats 11

Writes benchmarks/results/lm_cpu.json and lm_cpu.md. It never reports a number it did not measure.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam.config import MambaConfig  # noqa: E402
from sam.model.lm import MambaLM  # noqa: E402

# Layer shapes compared: Mamba-2's defaults (the published models' layers) and the cpu preset's.
SHAPES: dict[str, dict[str, int]] = {
    "mamba2 layer defaults (d_state 128, headdim 64, chunk 256)": dict(d_state=128, headdim=64, chunk_size=256),
    "cpu preset layer (d_state 32, headdim 32, chunk 64)": dict(d_state=32, headdim=32, chunk_size=64),
}


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions and git commit: what a reader needs to compare numbers."""
    if device.type == "cuda":
        dev = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        dev = f"CPU {platform.machine()} {platform.processor()}".rstrip() + f", {os.cpu_count()} cores"
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "triton", "mamba-ssm", "causal-conv1d"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"device": dev, "versions": versions, "git_commit": commit}


def write_results(out: Path, name: str, record: dict[str, Any], md_lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(md_lines).rstrip() + "\n")
    print("\n".join(md_lines))
    print(f"\nwrote {out / name}.json and .md")


def saved_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward while building `step`'s graph."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def time_alternating(fns: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def compare(shape_name: str, shape: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import Mamba2ForCausalLM

    cfg = MambaConfig(d_model=args.d_model, n_layer=args.layers, vocab_size=args.vocab, **shape)
    torch.manual_seed(0)
    ours = MambaLM(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, format="hf")
        theirs = Mamba2ForCausalLM.from_pretrained(d).train()
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
        agreement = ((a - b).norm() / b.norm()).item()

    def set_hf_chunk(q: int) -> None:
        for layer in theirs.backbone.layers:
            layer.mixer.chunk_size = q

    def step(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            lm_loss(model, ids).backward()

        return run

    # transformers' chunked scan is fastest at small chunks on CPU; time it there too, so the
    # comparison is not only against its configured chunk size.
    def theirs_at(q: int) -> Callable[[], None]:
        def run() -> None:
            set_hf_chunk(q)
            step(theirs)()
            set_hf_chunk(cfg.chunk_size)

        return run

    fns = {"ours": step(ours), "transformers": step(theirs), "transformers_chunk32": theirs_at(32)}
    times = time_alternating(fns, args.repeats, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    mem = {"ours": saved_bytes(lambda: lm_loss(ours, ids)), "transformers": saved_bytes(lambda: lm_loss(theirs, ids))}
    return {
        "shape": shape_name,
        "config": {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size, **shape},
        "batch": args.batch,
        "tokens": args.tokens,
        "logits_rel_diff": agreement,
        "seconds": times,
        "median_s": med,
        "min_s": best,
        "speedup_vs_transformers": med["transformers"] / med["ours"],
        "speedup_vs_transformers_chunk32": med["transformers_chunk32"] / med["ours"],
        "speedup_of_min_times": best["transformers"] / best["ours"],
        "saved_for_backward_MiB": {k: v / 2**20 for k, v in mem.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure, one row each")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += [{"threads": threads, **compare(name, shape, args)} for name, shape in SHAPES.items()]
    record = {
        "benchmark": "lm_cpu",
        "what": "forward + next-token cross-entropy + backward of a Mamba-2 LM, ours vs transformers Mamba2ForCausalLM (torch path), same weights",
        **environment(torch.device("cpu")),
        "load_average_before_after": [load_before, os.getloadavg()],
        "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "repeats": args.repeats,
        "rows": rows,
        "wall_time_s": time.perf_counter() - t0,
    }
    md = [
        "# MambaLM vs transformers Mamba2 (torch path): forward + backward on CPU",
        "",
        f"d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, batch {args.batch} x {args.tokens} tokens; "
        f"median of {args.repeats} alternating runs. Device: {record['device']}; load average (1 min) before/after "
        f"{load_before[0]:.1f} / {record['load_average_before_after'][1][0]:.1f}.",
        "",
        "| threads | layer shape | ours (s) | transformers (s) | speedup | speedup of fastest runs | transformers at chunk 32 (s) | speedup vs that | saved for backward ours / transformers (MiB) | logits rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, mem = r["median_s"], r["saved_for_backward_MiB"]
        md.append(
            f"| {r['threads']} | {r['shape']} | {m['ours']:.3f} | {m['transformers']:.3f} | {r['speedup_vs_transformers']:.2f}x | {r['speedup_of_min_times']:.2f}x | "
            f"{m['transformers_chunk32']:.3f} | {r['speedup_vs_transformers_chunk32']:.2f}x | "
            f"{mem['ours']:.0f} / {mem['transformers']:.0f} | {r['logits_rel_diff']:.1e} |"
        )
    md += [
        "",
        "Our PyTorch path picks its own chunk length on CPU (`sam.model.ssd.CPU_CHUNK_SIZE` = 32; results do not depend on it, "
        "tests/model/test_ssd.py), while transformers uses the configured one; the 'chunk 32' column gives transformers the same freedom.",
        "On a machine shared with other jobs (see the load average), multi-threaded timings swing widely; the 1-thread rows are the stable ones.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}; commit {record['git_commit'][:10]}.",
    ]
    write_results(args.out, "lm_cpu", record, md)
    return record


if __name__ == "__main__":
    main()
