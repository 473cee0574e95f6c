"""SAM: audio tower (EAT-style ViT) -> connector -> Mamba-2 language model, as one `nn.Module`.

The LM sequence of an example is ``[audio tokens][instruction prompt][response][eos]``; the audio
tokens are connector outputs fed as embeddings, the rest are token ids (template in `sam.prompt`).
Training loss is the mean cross-entropy on labelled (response) tokens only. `generate` left-pads a
batch so that every sequence ends at the same position and decodes greedily by default; batched and
one-by-one generation give the same text.

Checkpoints are a directory with config.json (`sam.config.to_dict`), model.safetensors and the
tokenizer files. LoRA adapters (peft, injected in place so module paths stay those of `MambaLM`) are
saved unmerged inside model.safetensors: a reloaded model is the same function, adapters stay
separable for further training and probing, and `merge_lora` folds them in when wanted.

This module never downloads anything and never unfreezes parameters behind the caller's back:
trainability changes only through `set_trainable`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam.checkpoint import atomic_write_bytes
from sam.config import ConfigError, SAMConfig, from_dict, to_dict
from sam.model.audio import load_audio, waves_to_features
from sam.model.connector import Connector
from sam.model.encoder import AudioEncoder
from sam.model.lm import MambaLM, padded_vocab_size
from sam.prompt import IGNORE_INDEX, encode_example

TRAINABLE_GROUPS = ("encoder", "connector", "lora", "lm", "head")
_EMBEDDING, _TIED_HEAD = "language_model.backbone.embedding.weight", "language_model.lm_head.weight"


@contextlib.contextmanager
def _part_seed(base: int, part: int) -> Iterator[None]:
    """Seed the CPU generator for one part's initialization; the global RNG is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((base + 1_000_003 * part) % 2**63)
        yield


def label_positions(labels: Tensor, bucket: int = 16) -> Tensor:
    """[B, K] text positions for `SAM.forward`'s head: each row's labelled positions first, in order,
    then unlabelled ones as filler (their labels are IGNORE_INDEX, so they add nothing to the loss;
    the last one repeats when K exceeds the text length). K is the most labelled positions of any
    row rounded up to a multiple of `bucket`, which bounds the number of shapes (CUDA graphs);
    call it on host tensors, since K is a shape."""
    ignored = labels == IGNORE_INDEX
    width = labels.shape[1]
    most = int((~ignored).sum(1).max()) if labels.numel() else 0
    k = max(bucket, -(-most // bucket) * bucket)
    if not bool(ignored.any(1).all()):  # a row without filler: no more positions than it has
        k = min(k, width)
    # A stable sort of the 0/1 flags keeps the positions in order within each of the two groups.
    order = torch.argsort(ignored.to(torch.int8), dim=1, stable=True)
    return order[:, torch.arange(k).clamp(max=width - 1)]


class SAM(nn.Module):
    """The composite model; `audio_tower`, `connector` and `language_model` are its three parts."""

    def __init__(self, config: SAMConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        if tokenizer is None and config.tokenizer:
            from sam.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(config.tokenizer)
        self.tokenizer = tokenizer
        # Each part draws its initial weights from its own seed (derived from the global one), so a
        # part's init does not depend on the others' shapes: the run cache can then share an
        # encoder pretrained under one LM size with every other LM size (sam.runs).
        base = torch.initial_seed()
        with _part_seed(base, 1):
            self.audio_tower = AudioEncoder(self.config.encoder, self.config.audio)
        if self.config.lm_checkpoint:
            self.language_model = MambaLM.from_pretrained(self.config.lm_checkpoint)
            self.config.lm = copy.deepcopy(self.language_model.config)  # the checkpoint's shape wins
        else:
            with _part_seed(base, 2):
                self.language_model = MambaLM(self.config.lm)
        lm_dim = self.language_model.config.d_model
        if tokenizer is not None and len(tokenizer) > padded_vocab_size(self.language_model.config):
            raise ConfigError(
                f"tokenizer has {len(tokenizer)} tokens but lm.vocab_size allows {padded_vocab_size(self.language_model.config)}; raise lm.vocab_size"
            )
        sep_ids = tokenizer.encode(self.config.connector.separator, add_special_tokens=False) if tokenizer is not None else []
        self.register_buffer("separator_ids", torch.tensor(sep_ids, dtype=torch.long), persistent=False)
        grid = self.audio_tower.grid_shape(self.config.audio.target_frames)
        with _part_seed(base, 3):
            self.connector = Connector(self.config.connector, self.audio_tower.embed_dim, lm_dim, grid, sep_len=max(1, len(sep_ids)))
        self.lora_enabled = False
        if self.config.lora.rank > 0:
            with _part_seed(base, 4):
                self.add_lora()

    # ---- parts -----------------------------------------------------------------------------

    def add_lora(self) -> None:
        """Inject LoRA (rank, alpha = 2 * rank unless set) into the LM's target projections, in place."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        if self.lora_enabled:
            raise RuntimeError("LoRA is already present in this model")
        lc = self.config.lora
        if lc.rank <= 0:
            raise ConfigError(f"lora.rank must be > 0 to add LoRA, got {lc.rank}")
        before = {n: p.requires_grad for n, p in self.language_model.named_parameters()}
        peft_cfg = PeftLoraConfig(
            r=lc.rank, lora_alpha=lc.alpha or 2 * lc.rank, lora_dropout=lc.dropout, target_modules=list(lc.target_modules)
        )
        inject_adapter_in_model(peft_cfg, self.language_model)
        # peft freezes the base weights; trainability is this class's job (set_trainable), so undo that.
        for n, p in self.language_model.named_parameters():
            base = n.replace(".base_layer", "")
            p.requires_grad_(before.get(base, True))
        self.lora_enabled = True

    def merge_lora(self) -> None:
        """Fold the adapters into the base weights and remove them (config.lora.rank becomes 0)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.language_model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent = self.language_model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.language_model
                setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
        self.lora_enabled = False
        self.config.lora.rank = 0

    def _group_params(self, group: str) -> list[nn.Parameter]:
        lm = self.language_model
        if group == "encoder":
            return list(self.audio_tower.parameters())
        if group == "connector":
            return list(self.connector.parameters())
        if group == "lora":
            if not self.lora_enabled:
                raise ConfigError("trainable group 'lora' needs lora.rank > 0")
            return [p for n, p in lm.named_parameters() if "lora_" in n]
        if group == "lm":
            return [p for n, p in lm.named_parameters() if "lora_" not in n]
        if group == "head":
            return list(lm.lm_head.parameters())
        raise ConfigError(f"unknown trainable group {group!r}; choose from {', '.join(TRAINABLE_GROUPS)}")

    def set_trainable(self, groups: Sequence[str]) -> list[nn.Parameter]:
        """Train exactly `groups` (encoder|connector|lora|lm|head); freeze all else. Returns the trainable params."""
        for p in self.parameters():
            p.requires_grad_(False)
        chosen: dict[int, nn.Parameter] = {}
        for g in groups:
            for p in self._group_params(g):
                p.requires_grad_(True)
                chosen[id(p)] = p
        return list(chosen.values())

    # ---- forward ---------------------------------------------------------------------------

    def separator_embeds(self) -> Tensor | None:
        if not self.connector.uses_separator:
            return None
        if self.separator_ids.numel() == 0:
            raise ConfigError(
                f"connector.layout={self.connector.layout} needs a tokenizer to embed the separator {self.config.connector.separator!r}"
            )
        return self.language_model.get_input_embeddings()(self.separator_ids)

    def encode_audio(self, fbank: Tensor) -> Tensor:
        """Normalized fbank [B, frames, mel] -> audio tokens in LM space [B, N, d_model]."""
        return self.connector(self.audio_tower(fbank), self.separator_embeds())

    def num_audio_tokens(self, frames: int | None = None) -> int:
        t, f = self.audio_tower.grid_shape(frames or self.config.audio.target_frames)
        return self.connector.num_tokens(t, f)

    def audio_span(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, 2] (start, end) of the audio tokens in each LM sequence of `forward(batch)`."""
        b, frames = batch["fbank"].shape[:2]
        span = torch.tensor([0, self.num_audio_tokens(frames)], dtype=torch.long)
        return span.expand(b, 2).clone()

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        """(loss, logits) for a right-padded batch; logits cover the whole sequence [audio][text].

        batch: fbank [B, frames, mel], input_ids [B, L], attention_mask [B, L], labels [B, L]
        (IGNORE_INDEX on prompt and padding; omitted -> loss is None).

        With labels and label_positions [B, K] (`label_positions(labels)`, as the trainer's batches
        carry them), the LM head runs only on the hidden states that predict those text positions:
        the same loss (up to float summation order) without the head and cross-entropy over every
        audio, prompt and padding position, and logits [B, K, vocab] for those positions only.
        """
        for key in ("fbank", "input_ids"):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r}; it needs fbank, input_ids, attention_mask (and labels for a loss)")
        audio = self.encode_audio(batch["fbank"])
        ids = batch["input_ids"]
        text = self.language_model.get_input_embeddings()(ids)
        n = audio.shape[1]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        full_mask = torch.cat([mask.new_ones(ids.shape[0], n), mask], dim=1)
        labels, positions = batch.get("labels"), batch.get("label_positions")
        if labels is None:
            positions = None
        # position n - 1 + j predicts text token j: the last audio token predicts the first prompt token
        head = {} if positions is None else {"logits_at": positions + (n - 1)}
        logits = self.language_model(inputs_embeds=torch.cat([audio.to(text.dtype), text], dim=1), attention_mask=full_mask, **head).logits
        if labels is None:
            return None, logits
        # Checked only for host tensors: on CUDA the check would stall the host mid-step until the
        # forward pass finished (the trainer checks its host copy of the batch before the copy).
        if not labels.is_cuda and not bool((labels != IGNORE_INDEX).any()):
            raise ValueError("batch has no labelled tokens (all labels are IGNORE_INDEX)")
        if positions is None:
            pred = logits[:, n - 1 : n - 1 + ids.shape[1]]
        else:
            pred, labels = logits, labels.gather(1, positions)
        loss = F.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
        return loss, logits

    # ---- generation ------------------------------------------------------------------------

    def features(self, audio: Tensor | Sequence[Any]) -> Tensor:
        """Normalized fbank batch from an fbank tensor or a list of waveforms / paths / bytes."""
        if isinstance(audio, Tensor):
            if audio.dim() != 3:
                raise ValueError(f"audio tensor must be an fbank batch [B, frames, mel], got {tuple(audio.shape)}")
            return audio
        waves = [a if isinstance(a, (np.ndarray, Tensor)) else load_audio(a, self.config.audio.sample_rate) for a in audio]
        return waves_to_features(waves, self.config.audio)

    @torch.no_grad()
    def generate(
        self, audio: Tensor | Sequence[Any], prompts: Sequence[str] | str, max_new_tokens: int = 32, do_sample: bool = False, **kwargs: Any
    ) -> list[str]:
        """Responses to `prompts` (instructions) about `audio`, batched with left padding, greedy by default."""
        if self.tokenizer is None:
            raise ConfigError("generate needs a tokenizer: pass one to SAM(...) or set config.tokenizer")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a whole number >= 1, got {max_new_tokens!r}")
        if not isinstance(audio, Tensor) and len(audio) == 0:
            return []  # no clips, no answers
        device = self.language_model.device
        fbank = self.features(audio).to(device)
        prompts = [prompts] * fbank.shape[0] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != fbank.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {fbank.shape[0]} audio clips")
        empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
        if empty:
            raise ValueError(f"prompt {empty[0]}: empty; ask a question or give an instruction")
        was_training = self.training
        self.eval()
        try:
            audio_tok = self.encode_audio(fbank)
            if not torch.isfinite(audio_tok).all():  # NaN tokens decode to empty answers, which look like output
                raise ValueError("audio tokens are NaN or infinite: the model's weights or the input features are not finite")
            embed = self.language_model.get_input_embeddings()
            seqs = [torch.tensor(encode_example(self.tokenizer, p)[0], dtype=torch.long, device=device) for p in prompts]
            width = max(len(s) for s in seqs)
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
            for i, s in enumerate(seqs):  # left padding: padding goes before the audio tokens
                ids[i, width - len(s) :] = s
                mask[i, width - len(s) :] = 1
            pad_count = width - mask.sum(1)
            text = embed(ids)
            n = audio_tok.shape[1]
            # Per row: [pad x k][audio][prompt]: shift each row's audio right by its pad count.
            rows = []
            for i in range(len(seqs)):
                k = int(pad_count[i])
                rows.append(torch.cat([text[i, :k], audio_tok[i].to(text.dtype), text[i, k:]], dim=0))
            inputs = torch.stack(rows)
            full_mask = torch.cat([mask.new_zeros(mask.shape[0], n), mask], dim=1)
            for i in range(len(seqs)):
                full_mask[i, int(pad_count[i]) : int(pad_count[i]) + n] = 1
            out = self.language_model.generate(
                inputs_embeds=inputs,
                attention_mask=full_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                do_sample=do_sample,
                **kwargs,
            )
        finally:
            self.train(was_training)
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.no_grad()
    def continuation_logprobs(
        self, audio: Tensor | Sequence[Any], prompts: Sequence[str], continuations: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        """Log-likelihood of each response `continuations[i]` to `prompts[i]` about `audio[i]`.

        Returns (sum of log-probabilities, token count) per item, both [B] on the CPU. A response is
        scored exactly as training supervises it: the batch is built as the trainer's (`encode_example`,
        right-padded by `collate`; the LM is causal, so padding after a response changes nothing
        before it) and `forward`'s label-only head gives the logits of the response tokens alone. Used
        to score multiple-choice questions by likelihood (`sam.eval.choice_likelihoods`), which
        needs no answer format from the model."""
        from sam.data.dataset import collate

        if self.tokenizer is None:
            raise ConfigError("continuation_logprobs needs a tokenizer: pass one to SAM(...) or set config.tokenizer")
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
        fbank = self.features(audio)
        if fbank.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts for {fbank.shape[0]} audio clips")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        items = []
        for f, p, c in zip(fbank, prompts, continuations):
            ids, labels = encode_example(self.tokenizer, p, c)
            items.append({"fbank": f, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pad_id": pad_id, "example": None})
        batch = collate(items)
        positions = label_positions(batch["labels"])
        device = self.language_model.device
        was_training = self.training
        self.eval()
        try:
            _, logits = self.forward(
                {k: batch[k].to(device) for k in ("fbank", "input_ids", "attention_mask", "labels")}
                | {"label_positions": positions.to(device)}
            )
        finally:
            self.train(was_training)
        targets = batch["labels"].gather(1, positions)  # IGNORE_INDEX on the filler positions
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        scored = targets != IGNORE_INDEX
        picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (picked * scored).sum(1), scored.sum(1)

    # ---- checkpoints -----------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (+ tokenizer files) into directory `path`, each file atomically."""
        from safetensors.torch import save

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        if self.language_model.config.tie_embeddings:
            state.pop(_TIED_HEAD)  # an alias of the embedding; safetensors stores no aliases
        atomic_write_bytes(path / "model.safetensors", save(state, metadata={"format": "pt"}))
        atomic_write_bytes(path / "config.json", (json.dumps(to_dict(self.config), indent=2) + "\n").encode())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer: Any = None, device: str | torch.device = "cpu") -> SAM:
        """Load a directory written by `save_pretrained`; the encoder/LM source checkpoints are not re-read."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise ConfigError(f"{f} is missing: a SAM checkpoint directory holds config.json and model.safetensors")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cfg_file}: not valid JSON ({e})") from None
        config = from_dict(SAMConfig, raw)
        if tokenizer is None and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            from sam.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path)
        build = copy.deepcopy(config)
        build.lm_checkpoint = ""
        if tokenizer is not None:
            build.tokenizer = ""
        if build.encoder.kind == "eat":
            build.encoder.checkpoint = ""  # weights come from model.safetensors; AST needs its dir for the architecture
        model = cls(build, tokenizer=tokenizer)
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for a cut or damaged header
            raise ConfigError(f"{weights}: not a readable safetensors file, truncated or damaged ({type(e).__name__}: {e})") from None
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise ConfigError(f"{weights}: weight {bad} holds NaN or infinite values; the checkpoint is damaged (or training diverged)")
        try:
            if model.language_model.config.tie_embeddings:
                state[_TIED_HEAD] = state[_EMBEDDING]
            model.load_state_dict(state, strict=True)
        except Exception as e:
            raise ConfigError(f"{weights}: does not match config.json ({type(e).__name__}: {e})") from None
        model.config = config
        return model.to(device)
