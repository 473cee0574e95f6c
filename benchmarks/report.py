"""What every benchmark result file records besides its numbers: versions, device, kernel path, command line,
and the Markdown table it is written as."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a benchmark's numbers depend on."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "triton", "mamba-ssm", "causal-conv1d"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def kernel_path(device: torch.device) -> str:
    """Which SSD implementation the Mamba-2 mixer runs on `device`."""
    if device.type != "cuda":
        return "pure PyTorch (sam.ssd)"
    from sam.model.mamba2 import _kernels

    k = _kernels()
    return "mamba_ssm Triton SSD kernels" if getattr(k, "chunk_scan", None) is not None else f"pure PyTorch ({getattr(k, 'error', '')})"


def portable_command(script: str, argv: list[str]) -> str:
    """The command line as recorded in a result file: absolute paths become repository-relative, or
    ``<path>`` when outside the repository (result files name no particular machine)."""
    out = []
    for arg in argv:
        if arg.startswith("/"):
            path = Path(arg)
            arg = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "<path>"
        out.append(arg)
    return " ".join([f"python benchmarks/{script}", *out])


def key_value_markdown(title: str, rows: list[tuple[str, str]]) -> str:
    """A benchmark result as a Markdown title + two-column table (shared by the benchmark scripts)."""
    return f"# {title}\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def cell(text: str, width: int) -> str:
    """`text` shortened to `width` characters, safe inside a Markdown table cell."""
    text = " ".join(str(text).replace("|", "/").split())
    return text if len(text) <= width else text[: width - 3] + "..."
