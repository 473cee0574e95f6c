"""Tokenizers: a local Hugging Face tokenizer directory, or a byte-level BPE trained on corpus text.

Real checkpoints use the GPT-NeoX tokenizer of state-spaces/mamba2-* (read from a local directory);
the cpu/gpu presets train a small byte-level BPE on the corpus' own captions and answers. Both come
back as `PreTrainedTokenizerFast` with eos and pad set, and `train_bpe` writes a directory that
`load_tokenizer` reads. This module never downloads anything: paths are local only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# GPT-NeoX's specials, so a trained BPE puts eos/pad at the same ids (0, 1) as the real tokenizer.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


class TokenizerError(ValueError):
    """A tokenizer directory or training corpus is unusable; the message says which and why."""


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local HF directory (tokenizer.json / tokenizer_config.json ...).

    A tokenizer without a pad token (GPT-NeoX has none) gets pad = eos; one without eos is refused,
    since generation and the response loss both end on eos.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(f"tokenizer directory {path} does not exist")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise TokenizerError(f"{path}: no tokenizer.json, tokenizer_config.json or vocab.json; not a tokenizer directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise TokenizerError(f"{path}: cannot load tokenizer ({type(e).__name__}: {e})") from None
    if tok.eos_token_id is None:
        raise TokenizerError(f"{path}: tokenizer has no eos token; set eos_token in tokenizer_config.json")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2/NeoX style) on `texts`; save it to `out_dir` if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TokenizerError("train_bpe: no non-empty texts to train on")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise TokenizerError(f"train_bpe: vocab_size={vocab_size} is below the byte alphabet + specials ({len(alphabet) + 2})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast
