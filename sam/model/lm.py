"""MambaLM: the Mamba-2 language model and cached decoding (checkpoint formats: `sam.model.lm_formats`).

The module tree (`backbone.embedding`, `backbone.layers[i].norm`, `backbone.layers[i].mixer`,
`backbone.norm_f`, `lm_head`) and so the state-dict keys are those of mamba_ssm's
`MambaLMHeadModel`: a state-spaces/mamba2-* `pytorch_model.bin` loads with no renaming.
Hugging Face `Mamba2ForCausalLM` checkpoints (config.json + safetensors) load too, and
`save_pretrained` writes either layout. `backbone.layers[i]` returns the residual stream after
block i, so a forward hook on it sees what probes call `lm.layers.{i}`.

Generation prefills the prompt with the parallel scan (carrying the final conv and SSM states out of
it) and then steps one token at a time; it never steps through the prompt.

Loading never unpickles arbitrary objects (safetensors, or `torch.load(weights_only=True)`), and
this module never imports GPU-only packages (kernel dispatch lives in `sam.model.mamba2`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sam.config import LM_SIZES, ConfigError, MambaConfig, preset
from sam.model.lm_formats import (
    CheckpointError,
    atomic_write,
    config_from_hf,
    config_from_mamba_ssm,
    config_to_hf,
    config_to_mamba_ssm,
    padded_vocab_size,
    read_weights,
)
from sam.model.mamba2 import Mamba2Mixer, MambaCache, RMSNorm, check_config

NAMED_SIZES: dict[str, tuple[int, int]] = {
    "130m": (768, 24),
    "370m": (1024, 48),
    "780m": (1536, 48),
    "1.3b": (2048, 48),
    "2.7b": (2560, 64),
}


def named_config(name: str) -> MambaConfig:
    """'130m' .. '2.7b' (published shapes, GPT-NeoX vocab) or '<preset>-<size>' (e.g. 'cpu-small')."""
    key = name.lower().removeprefix("mamba2-")
    if key in NAMED_SIZES:
        d_model, n_layer = NAMED_SIZES[key]
        return MambaConfig(d_model=d_model, n_layer=n_layer)
    if "-" in key:
        p, size = key.split("-", 1)
        if p in LM_SIZES and size in LM_SIZES[p]:
            lm = preset(p, size).model.lm
            return dataclasses.replace(lm, **LM_SIZES[p][size])
    presets = [f"{p}-{s}" for p in LM_SIZES for s in LM_SIZES[p]]
    raise ConfigError(f"unknown LM size {name!r}; choose one of {', '.join(list(NAMED_SIZES) + presets)}")


def expected_num_params(cfg: MambaConfig) -> int:
    """Parameter count of a Mamba-2 LM from its shape (tied embeddings counted once)."""
    d, di, n, g = cfg.d_model, cfg.d_model * cfg.expand, cfg.d_state, cfg.ngroups
    h = di // cfg.headdim
    conv_dim = di + 2 * g * n
    per_layer = d * (2 * di + 2 * g * n + h) + conv_dim * (cfg.d_conv + 1) + 3 * h + di + di * d + d
    emb = padded_vocab_size(cfg) * d
    return cfg.n_layer * per_layer + emb + d + (0 if cfg.tie_embeddings else emb)


@dataclass
class LMOutput:
    """logits [B, L', vocab] (L' = num_last_tokens or L); hidden_states = final normed hidden [B, L, d]."""

    logits: Tensor
    hidden_states: Tensor
    cache: MambaCache | None = None


class Block(nn.Module):
    """Pre-norm residual block: returns residual + mixer(norm(residual))."""

    def __init__(self, config: MambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.mixer = Mamba2Mixer(config, layer_idx=layer_idx)

    def _residual(self, h: Tensor) -> Tensor:
        return h.float() if self.residual_in_fp32 else h

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, cache: MambaCache | None = None) -> Tensor:
        normed = self.norm(hidden_states.to(self.norm.weight.dtype))
        return self._residual(hidden_states) + self.mixer(normed, attention_mask=attention_mask, cache=cache)

    def step(self, hidden_states: Tensor, cache: MambaCache) -> Tensor:
        normed = self.norm(hidden_states.to(self.norm.weight.dtype))
        return self._residual(hidden_states) + self.mixer.step(normed, cache)


class MambaBackbone(nn.Module):
    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(padded_vocab_size(config), config.d_model)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, cache: MambaCache | None = None) -> Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                hidden_states = checkpoint(layer, hidden_states, attention_mask, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states, attention_mask=attention_mask, cache=cache)
        return self.norm_f(hidden_states.to(self.norm_f.weight.dtype))


class MambaLM(nn.Module):
    """Mamba-2 LM with mamba_ssm's MambaLMHeadModel state-dict layout."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, padded_vocab_size(config), bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def _init_weights(self) -> None:
        """mamba_ssm's scheme: embedding N(0, 0.02); out_proj rescaled by 1/sqrt(n_layer)."""
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for layer in self.backbone.layers:
            w = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(self.config.n_layer)

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, name_or_config: str | MambaConfig | dict[str, Any], **overrides: Any) -> MambaLM:
        """Randomly initialized model of a named size ('130m'..'2.7b', 'cpu-small', ...) or a config."""
        if isinstance(name_or_config, str):
            cfg = named_config(name_or_config)
        elif isinstance(name_or_config, dict):
            from sam.config import from_dict

            cfg = from_dict(MambaConfig, name_or_config, prefix="lm.")
        elif isinstance(name_or_config, MambaConfig):
            cfg = name_or_config
        else:
            raise ConfigError(f"from_config takes a size name, MambaConfig or dict, got {type(name_or_config).__name__}")
        if overrides:
            bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(MambaConfig)})
            if bad:
                raise ConfigError(f"unknown config key lm.{bad[0]}")
            cfg = dataclasses.replace(cfg, **overrides)
        return cls(cfg)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embedding

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    # ---- forward ---------------------------------------------------------------------------

    def _embed(self, input_ids: Tensor | None, inputs_embeds: Tensor | None) -> Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(f"inputs_embeds last dim must be d_model = {self.config.d_model}, got {tuple(inputs_embeds.shape)}")
            return inputs_embeds
        return self.backbone.embedding(input_ids)

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: MambaCache | None = None,
        num_last_tokens: int = 0,
        logits_at: Tensor | None = None,
    ) -> LMOutput:
        """Parallel forward over [B, L]. With `cache`, continues from it and advances it by L tokens.

        `logits_at` [B, K] (positions in each row): the head runs only there, logits [B, K, vocab].
        """
        h = self._embed(input_ids, inputs_embeds)
        if h.dim() != 3:
            raise ValueError(f"expected [batch, length] ids or [batch, length, d_model] embeddings, got shape {tuple(h.shape)}")
        hidden = self.backbone(h, attention_mask=attention_mask, cache=cache)
        if cache is not None:
            cache.seqlen_offset += h.shape[1]
        if logits_at is not None:
            head_in = hidden.gather(1, logits_at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        else:
            head_in = hidden[:, -num_last_tokens:] if num_last_tokens > 0 else hidden
        logits = self.lm_head(head_in.to(self.lm_head.weight.dtype))
        return LMOutput(logits=logits, hidden_states=hidden, cache=cache)

    # ---- decoding --------------------------------------------------------------------------

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> MambaCache:
        cache = MambaCache()
        for layer in self.backbone.layers:
            conv, ssm = layer.mixer.allocate_cache(batch_size, dtype=dtype, device=device)
            cache.conv_states.append(conv)
            cache.ssm_states.append(ssm)
        return cache

    def step(self, input_ids: Tensor | None, cache: MambaCache, inputs_embeds: Tensor | None = None) -> Tensor:
        """One token per sequence (ids [B] or embeddings [B, d_model]) -> logits [B, vocab]."""
        h = self._embed(input_ids, inputs_embeds)
        if h.dim() != 2:
            raise ValueError(f"step takes one token per sequence: ids [B] or embeddings [B, d_model]; got shape {tuple(h.shape)}")
        for layer in self.backbone.layers:
            h = layer.step(h, cache)
        cache.seqlen_offset += 1
        h = self.backbone.norm_f(h.to(self.backbone.norm_f.weight.dtype))
        return self.lm_head(h.to(self.lm_head.weight.dtype))

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        do_sample: bool = False,
        top_p: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """New tokens [B, <= max_new_tokens] after a (left-padded) prompt; greedy unless do_sample.

        Stops early once every sequence has produced eos; finished sequences are padded with eos.
        """
        h = self._embed(input_ids, inputs_embeds)
        if attention_mask is not None and not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs left padding: attention_mask[:, -1] must be 1 for every sequence")
        bsz = h.shape[0]
        cache = self.allocate_cache(bsz, device=h.device)
        logits = self.forward(inputs_embeds=h, attention_mask=attention_mask, cache=cache, num_last_tokens=1).logits[:, -1]
        finished = torch.zeros(bsz, dtype=torch.bool, device=h.device)
        out: list[Tensor] = []
        for i in range(max_new_tokens):
            nxt = _pick(logits[:, : self.config.vocab_size].float(), do_sample, top_p, temperature, generator)
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out.append(nxt)
            if (eos_token_id is not None and bool(finished.all())) or i == max_new_tokens - 1:
                break
            logits = self.step(nxt, cache)
        return torch.stack(out, dim=1) if out else torch.zeros(bsz, 0, dtype=torch.long, device=h.device)

    # ---- checkpoints -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = torch.float32, device: torch.device | str = "cpu"
    ) -> MambaLM:
        """Load a state-spaces/mamba2 dir (config.json with d_model..., pytorch_model.bin or safetensors)
        or a Hugging Face Mamba2 dir (config.json with hidden_size..., model.safetensors)."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory {path} does not exist")
        if not cfg_file.is_file():
            raise CheckpointError(f"{cfg_file} is missing: a Mamba-2 checkpoint dir needs config.json and weights")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{cfg_file}: top level must be an object")
        if "d_model" in raw:
            cfg, hf = config_from_mamba_ssm(raw, cfg_file), False
        elif "hidden_size" in raw:
            cfg, hf = config_from_hf(raw, cfg_file), True
        else:
            raise CheckpointError(
                f"{cfg_file}: neither a mamba_ssm config (d_model, n_layer, ...) nor a Hugging Face Mamba2 config (hidden_size, ...)"
            )
        state = read_weights(path)
        if hf:
            state = {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v for k, v in state.items()}
        with torch.device("meta"):
            model = cls(cfg)
        model.load_checkpoint_state(state, source=str(path))
        return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)

    def load_checkpoint_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Strictly load `state` (mamba_ssm key layout); errors name the key and both shapes."""
        own = self.state_dict()
        state = dict(state)
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
            own.pop("lm_head.weight", None)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing:
            raise CheckpointError(
                f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
            )
        if unexpected:
            raise CheckpointError(
                f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"{source}: key {k!r} has shape {tuple(state[k].shape)} in the checkpoint but the model expects {tuple(v.shape)}"
                )
        self.load_state_dict(state, strict=False, assign=True)
        for layer in self.backbone.layers:  # assign=True replaced the Parameter objects
            for p in (layer.mixer.dt_bias, layer.mixer.A_log, layer.mixer.D):
                p._no_weight_decay = True  # type: ignore[attr-defined]
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def save_pretrained(self, path: str | os.PathLike, format: str = "mamba_ssm", weights: str | None = None) -> None:
        """Write config.json + weights in the mamba_ssm or Hugging Face ('hf') layout.

        `weights` picks the file: "bin" (pytorch_model.bin, every key including the tied
        lm_head.weight, as the state-spaces/mamba2 repositories ship it and mamba_ssm's
        `MambaLMHeadModel.from_pretrained` reads it) or "safetensors" (model.safetensors without the
        tied copy, which safetensors cannot alias). Default: each layout's published file, "bin" for
        mamba_ssm and "safetensors" for hf."""
        from safetensors.torch import save_file

        if format not in ("mamba_ssm", "hf"):
            raise ValueError(f"format must be 'mamba_ssm' or 'hf', got {format!r}")
        weights = weights or ("bin" if format == "mamba_ssm" else "safetensors")
        if weights not in ("bin", "safetensors"):
            raise ValueError(f"weights must be 'bin' or 'safetensors', got {weights!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        if format == "hf":
            state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
            config = config_to_hf(self.config)
        else:
            config = config_to_mamba_ssm(self.config)
        if weights == "bin":
            if self.config.tie_embeddings:  # one storage for both keys, as torch.save of a tied model writes it
                state["lm_head.weight"] = state["backbone.embeddings.weight" if format == "hf" else "backbone.embedding.weight"]
            atomic_write(path / "pytorch_model.bin", lambda f: torch.save(state, f))
        else:
            if self.config.tie_embeddings:
                state.pop("lm_head.weight")  # shared with the embedding; safetensors stores no aliases
            atomic_write(path / "model.safetensors", lambda f: save_file(state, f, metadata={"format": "pt"}))
        # A weights file of the other kind left by an earlier save would win (or tie) at load time.
        (path / ("model.safetensors" if weights == "bin" else "pytorch_model.bin")).unlink(missing_ok=True)
        atomic_write(path / "config.json", lambda f: Path(f).write_text(json.dumps(config, indent=2) + "\n"))


def _pick(logits: Tensor, do_sample: bool, top_p: float, temperature: float, generator: torch.Generator | None) -> Tensor:
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
