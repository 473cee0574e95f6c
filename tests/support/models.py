"""Tiny models and checkpoint weights that tests of several packages build."""

from __future__ import annotations

import pytest
import torch

from sam.model.encoder import sincos_2d

# The shape of the tiny EAT encoder whose checkpoints `eat_weights` writes.
DIM, DEPTH, HEADS = 32, 2, 4


def tiny_hf(n_groups: int = 2, seed: int = 0):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        expand=2,
        head_dim=8,
        n_groups=n_groups,
        num_heads=8,
        conv_kernel=4,
        chunk_size=16,
        use_cache=False,
    )
    return Mamba2ForCausalLM(cfg).eval()


def tiny_lm(ngroups: int = 2, seed: int = 0):
    from sam.config import MambaConfig
    from sam.model.lm import MambaLM

    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=8, ngroups=ngroups, chunk_size=16)).eval()


def tiny_sam_and_batch(seed: int = 0):
    """A smoke-preset SAM (LoRA in place on in_proj/out_proj) and a right-padded batch of 2 clips."""
    sam_model = pytest.importorskip("sam.model", reason="sam.model is not there")
    from sam.config import preset

    cfg = preset("smoke").model
    torch.manual_seed(seed)
    model = sam_model.SAM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    batch = {
        "fbank": torch.randn(2, cfg.audio.target_frames, cfg.audio.num_mel_bins, generator=g),
        "input_ids": torch.randint(0, cfg.lm.vocab_size, (2, 9), generator=g),
        "attention_mask": mask,
    }
    return model, batch


def eat_weights(prefix: str, n_pos: int, fairseq: bool) -> dict[str, torch.Tensor]:
    """Random EAT encoder weights under the key layout of a released checkpoint (fairseq's, or the Hugging Face export's)."""
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen) * 0.1  # noqa: E731
    enc = prefix + ("modality_encoders.IMAGE." if fairseq else "")
    sd = {
        enc + "local_encoder.proj.weight": r(DIM, 1, 16, 16),
        enc + "local_encoder.proj.bias": r(DIM),
        enc + "extra_tokens": r(1, 1, DIM),
        enc + "fixed_positional_encoder.positions": sincos_2d(DIM, n_pos // 8, 8).unsqueeze(0),
    }
    norm = enc + "context_encoder.norm." if fairseq else prefix + "pre_norm."
    sd[norm + "weight"], sd[norm + "bias"] = 1 + r(DIM), r(DIM)
    for i in range(DEPTH):
        for name, shape in [
            ("norm1", (DIM,)),
            ("attn.qkv", (3 * DIM, DIM)),
            ("attn.proj", (DIM, DIM)),
            ("norm2", (DIM,)),
            ("mlp.fc1", (4 * DIM, DIM)),
            ("mlp.fc2", (DIM, 4 * DIM)),
        ]:
            sd[f"{prefix}blocks.{i}.{name}.weight"] = (1 + r(*shape)) if name.startswith("norm") else r(*shape)
            sd[f"{prefix}blocks.{i}.{name}.bias"] = r(shape[0])
    return sd
