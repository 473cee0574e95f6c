"""Training runs that tests of the trainer and of the GPU paths share: configs, the CLI in a subprocess, weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sam.config import ExperimentConfig, StageConfig, preset
from sam.tokenizer import load_tokenizer
from sam.train.runs import build_model

REPO = Path(__file__).resolve().parents[2]


def train_corpus_bpe(folder: Path) -> Path:
    """The BPE of `base_config`'s corpus (which must be built) trained into `folder`."""
    from sam.data import corpus_texts
    from sam.tokenizer import train_bpe

    data = base_config(Path(".")).data
    train_bpe(corpus_texts(data), data.bpe_vocab_size, folder)
    return folder


def base_config(tokenizer: Path) -> ExperimentConfig:
    """The smoke preset on the built corpus with `tokenizer`, validation on 4 clips, a log row every step."""
    exp = preset("smoke")
    exp.data.root = str(REPO / "data")
    exp.data.n_valid = 4
    exp.model.tokenizer = str(tokenizer)
    exp.train.eval_batch_size = 2
    exp.train.log_every = 1
    return exp


def short_config(tokenizer: Path, lora_dropout: float) -> ExperimentConfig:
    """LM pretraining, stage 0, and a stage training encoder, connector and LoRA, with a checkpoint
    every 2 steps."""
    exp = base_config(tokenizer)
    exp.model.lora.dropout = lora_dropout
    exp.train.checkpoint_every = 2
    exp.train.stages = [
        StageConfig("stage_lm", ["text"], ["lm"], 3e-3, 3, 1, 4, grad_accum=2),
        StageConfig("stage0", ["classification"], ["encoder", "classifier"], 5e-3, 2, 1, 2),
        StageConfig("stage2", ["classification", "closed"], ["encoder", "connector", "lora"], 3e-3, 6, 1, 2, grad_accum=2),
    ]
    return exp


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a SAM checkpoint directory."""
    return load_file(str(folder / "model.safetensors"))


def initial_weights(exp: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The weights a run starts from (the seeded random init that `train_or_load` builds)."""
    model = build_model(exp, load_tokenizer(exp.model.tokenizer), torch.device("cpu"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_cli(config: Path, runs: Path, env: dict[str, str] | None = None, torchrun: int = 0, device: str = "cpu") -> subprocess.Popen:
    """`sam train` on `config` in a new process (under torchrun with `torchrun` processes)."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    )
    cmd = launcher + ["-m", "sam.cli", "train", "--config", str(config), "--runs-dir", str(runs), "--device", device, "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_run(proc: subprocess.Popen) -> Path:
    """Wait for a `train_cli` process; its run directory (the last line it prints)."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    assert (run_dir / "model").is_dir(), f"last output line is not a run directory:\n{out[-2000:]}\n{err[-2000:]}"
    return run_dir


def parallel_config(tokenizer: Path) -> ExperimentConfig:
    """`short_config` for comparing torchrun with one process: LM pretraining (whole LM), stage 0
    (encoder + classifier), then a stage training encoder, connector and LoRA over a frozen LM."""
    exp = short_config(tokenizer, lora_dropout=0.0)  # dropout masks are per-rank random draws
    exp.train.checkpoint_every = 0
    exp.train.stages[-1].steps = 3
    return exp
