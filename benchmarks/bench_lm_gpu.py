"""GPU speed of our Mamba-2 layer stack on the kernel path vs mamba_ssm's `Mamba2` vs our torch path.

A stack of 780m-shaped layers (d_model 1536, d_state 128, headdim 64, chunk 256; `--layers` of
them, pre-norm residual blocks with the same RMSNorm for every variant) runs forward + backward on
[batch, tokens] in bf16 autocast with fp32 weights (the usual training recipe; `--precision bf16`
casts the weights instead). All variants hold the same weights: mamba_ssm's `Mamba2` has our
parameter names, so its state dict is loaded from ours. Outputs and input gradients of every bf16
variant are compared against our torch path in fp32.

    python benchmarks/bench_lm_gpu.py --out DIR [--layers 12] [--tokens 2048 8192] [--repeats 10]

Needs CUDA; mamba_ssm (and optionally causal_conv1d) for the kernel rows, which are reported as
unavailable otherwise. Writes DIR/lm_gpu.json and DIR/lm_gpu.md and prints the table. The first
Triton call of each shape compiles (about 25 s); warm-up runs absorb it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lm_cpu import environment, write_results  # noqa: E402

from sam.model.lm import Block, named_config  # noqa: E402
from sam.model.mamba2 import RMSNorm, _kernels  # noqa: E402


class Stack(nn.Module):
    """Residual pre-norm blocks around any mixer with forward(x) -> x-shaped output."""

    def __init__(self, norms: list[nn.Module], mixers: list[nn.Module]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(norms)
        self.mixers = nn.ModuleList(mixers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, mixer in zip(self.norms, self.mixers):
            x = x.float() + mixer(norm(x))
        return x


def build(layers: int, device: torch.device) -> tuple[Stack, Stack, Stack | None, str]:
    """(ours with kernels, ours forced to torch, mamba_ssm or None, how the kernel rows run)."""
    cfg = named_config("780m")
    torch.manual_seed(0)
    blocks = [Block(cfg, i) for i in range(layers)]
    ours = Stack([b.norm for b in blocks], [b.mixer for b in blocks]).to(device)
    torch.manual_seed(0)
    blocks_t = [Block(cfg, i) for i in range(layers)]
    ours_torch = Stack([b.norm for b in blocks_t], [b.mixer for b in blocks_t]).to(device)
    ours_torch.load_state_dict(ours.state_dict())
    for m in ours_torch.mixers:
        m.kernels = "torch"
    k = _kernels()  # also registers the selective_scan_cuda stand-in mamba_ssm 2.3.x needs to import
    if k.chunk_scan is None:
        return ours, ours_torch, None, f"mamba_ssm unavailable ({k.error}); 'ours (kernels)' falls back to the torch path"
    from mamba_ssm.modules.mamba2 import Mamba2

    fused = k.split_conv1d_scan is not None
    theirs_mixers = [
        Mamba2(
            cfg.d_model,
            d_state=cfg.d_state,
            d_conv=cfg.d_conv,
            expand=cfg.expand,
            headdim=cfg.headdim,
            ngroups=cfg.ngroups,
            chunk_size=cfg.chunk_size,
            use_mem_eff_path=fused,
            layer_idx=i,
        )
        for i in range(layers)
    ]
    theirs = Stack([RMSNorm(cfg.d_model, cfg.norm_epsilon) for _ in range(layers)], theirs_mixers).to(device)
    theirs.load_state_dict(ours.state_dict())
    how = (
        "fused mamba_split_conv1d_scan_combined (causal_conv1d installed)"
        if fused
        else "mamba_chunk_scan_combined + "
        + ("causal_conv1d" if k.conv1d else "torch conv1d")
        + " (causal_conv1d not installed: mamba_ssm's Mamba2 runs with use_mem_eff_path=False)"
    )
    return ours, ours_torch, theirs, how


def run_step(model: nn.Module, x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """precision: 'autocast' (bf16 autocast), 'bf16' (bf16 weights and input) or 'fp32'."""
    x = x.detach().requires_grad_(True)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "autocast" else nullcontext()
    with ctx:
        y = model(x.to(torch.bfloat16) if precision == "bf16" else x)
    y.float().pow(2).mean().backward()
    return y.detach(), x.grad.detach()


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["autocast", "bf16"], default="autocast")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_lm_gpu.py needs a CUDA device; for CPU numbers run benchmarks/bench_lm_cpu.py")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    ours, ours_torch, theirs, how = build(args.layers, device)
    if args.precision == "bf16":
        for m in (ours, ours_torch, theirs):
            if m is not None:
                m.to(torch.bfloat16)
    variants = {"ours (kernels)": ours, "mamba_ssm Mamba2": theirs, "ours (torch path)": ours_torch}
    reference = Stack(list(ours_torch.norms), list(ours_torch.mixers))  # shares weights with ours_torch
    rows = []
    for n in args.tokens:
        x = torch.randn(args.batch, n, named_config("780m").d_model, device=device)
        ref_y = ref_g = None
        if args.precision == "autocast":
            try:
                ref_y, ref_g = run_step(reference, x, "fp32")
            except torch.OutOfMemoryError:
                pass
            reference.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        for name, model in variants.items():
            row: dict[str, Any] = {"variant": name, "tokens": n, "batch": args.batch}
            if model is None:
                rows.append({**row, "status": "mamba_ssm not importable"})
                continue
            try:
                model.zero_grad(set_to_none=True)
                y, g = run_step(model, x, args.precision)
                if ref_y is not None:
                    row["out_rel_err_vs_fp32_torch"] = rel(y, ref_y)
                    row["input_grad_rel_err_vs_fp32_torch"] = rel(g, ref_g)
                del y, g
                torch.cuda.reset_peak_memory_stats()
                secs = timed(lambda model=model, x=x: run_step(model, x, args.precision), args.repeats, args.warmup)
                row.update(
                    status="ok",
                    seconds=secs,
                    median_s=statistics.median(secs),
                    tokens_per_s=args.batch * n / statistics.median(secs),
                    peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30,
                )
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
            except Exception as e:  # report and carry on with the other variants
                row["status"] = f"failed: {type(e).__name__}: {e}"
                traceback.print_exc()
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            rows.append(row)
    record = {
        "benchmark": "lm_gpu",
        "what": f"forward + backward of {args.layers} 780m-shaped Mamba-2 layers ({args.precision}), same weights",
        **environment(device),
        "kernel_rows": how,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    md = [
        "# Mamba-2 layer stack on GPU: ours (kernels) vs mamba_ssm Mamba2 vs ours (torch path)",
        "",
        f"{args.layers} layers of the 780m shape (d_model 1536, d_state 128, headdim 64, chunk 256), batch {args.batch}, "
        f"{args.precision} (bf16 autocast, fp32 weights, unless 'bf16'); median of {args.repeats} forward+backward runs after {args.warmup} warm-ups.",
        f"Device: {record['device']}. Kernel rows: {how}.",
        "",
        "| tokens | variant | median (ms) | tokens/s | vs mamba_ssm | peak mem (GiB) | out rel. err vs fp32 | input-grad rel. err vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in args.tokens:
        base = next((r for r in rows if r["tokens"] == n and r["variant"] == "mamba_ssm Mamba2" and r.get("status") == "ok"), None)
        for r in (r for r in rows if r["tokens"] == n):
            if r.get("status") != "ok":
                md.append(f"| {n} | {r['variant']} | {r.get('status')} | | | | | |")
                continue
            ratio = f"{base['median_s'] / r['median_s']:.2f}x" if base else "n/a"
            errs = [f"{r[k]:.1e}" if k in r else "n/a" for k in ("out_rel_err_vs_fp32_torch", "input_grad_rel_err_vs_fp32_torch")]
            md.append(
                f"| {n} | {r['variant']} | {1e3 * r['median_s']:.1f} | {r['tokens_per_s']:.0f} | {ratio} | {r['peak_mem_GiB']:.2f} | {errs[0]} | {errs[1]} |"
            )
    md += [
        "",
        "'vs mamba_ssm' > 1 means faster than mamba_ssm's Mamba2.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}; commit {record['git_commit'][:10]}.",
    ]
    write_results(args.out, "lm_gpu", record, md)
    return record


if __name__ == "__main__":
    main()
