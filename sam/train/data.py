"""What a stage trains on, in which order: the seeded sample stream, loaders, the text-only LM dataset and the
label-positions collate.

Data order is a pure function of (seed, stage, position): each epoch is a seeded permutation and a
micro-batch is a slice of that stream, so resuming needs only the step counter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from sam.config import ConfigError
from sam.model.sam import label_positions
from sam.prompt import IGNORE_INDEX, encode_example

# --------------------------------------------------------------------------------------------
# Data order


class StreamSampler(Sampler[list[int]]):
    """Yields this rank's share of global micro-batches, starting at micro-batch `start`.

    The stream is epoch 0's permutation, then epoch 1's, ...; each epoch's permutation comes from
    a generator seeded with (seed, epoch). Global micro-batch j is stream positions
    [j*B, (j+1)*B); rank r takes the r-th of `world_size` equal slices of it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ConfigError("the stage has no training examples (check its tasks and data settings)")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} is not divisible by the {world_size} torchrun processes")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def position(self, micro_batch: int) -> dict[str, int]:
        """Epoch and offset in that epoch where global micro-batch `micro_batch` starts."""
        pos = micro_batch * self.batch_size
        return {"epoch": pos // self.n, "offset": pos % self.n, "micro_batch": micro_batch}

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.world_size
        j = self.start
        while True:
            first = j * self.batch_size + self.rank * local
            yield [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + local)]
            j += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 2**62


# --------------------------------------------------------------------------------------------
# Stage data and loaders


@dataclass
class StageData:
    """A stage's examples and how to batch them (dataset + collate from `sam.data.dataset`)."""

    train: list[Any]
    valid: list[Any]
    make_dataset: Any  # examples -> torch Dataset
    collate: Any


def make_loader(data: StageData, examples: list[Any], sampler: Sampler, workers: int, seed: int, pin: bool = False) -> DataLoader:
    # A private generator: DataLoader otherwise draws its worker seed from the global RNG, which
    # would shift dropout masks between a fresh run and a resumed one. Pinned batches (CUDA) make
    # the step's non_blocking copy really asynchronous.
    return DataLoader(
        data.make_dataset(examples),
        batch_sampler=sampler,
        collate_fn=data.collate,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        pin_memory=pin,
    )


def fixed_batches(data: StageData, examples: list[Any], batch_size: int, limit: int) -> list[dict[str, Any]]:
    ds = data.make_dataset(examples[:limit])
    items = [ds[i] for i in range(len(ds))]
    return [data.collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


class WithLabelPositions:
    """A collate function that adds `label_positions` (sam.model.label_positions of the labels) to
    each batch, so that SAM.forward applies its LM head and loss only there. Computed on the host,
    where the loader builds the batch: the number of positions is a shape (CUDA graphs capture one
    per shape), which the device must not have to report back."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]):
        self.collate = collate

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        batch = self.collate(items)
        batch["label_positions"] = label_positions(batch["labels"])
        return batch


# --------------------------------------------------------------------------------------------
# Text-only data for LM pretraining


class TextDataset(torch.utils.data.Dataset):
    """Items: prompt + answer + eos token ids of an example (tokenized as SAM's own training does,
    by `encode_example`), labels = the ids with the first position ignored. Never reads audio."""

    def __init__(self, examples: Sequence[Any], tokenizer: Any):
        self.examples, self.tokenizer = list(examples), tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        ids = torch.tensor(encode_example(self.tokenizer, ex.instruction, ex.answer)[0], dtype=torch.long)
        labels = ids.clone()
        labels[0] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "pad_id": self.pad_id}


def collate_text(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Right-pad ids with the pad id and labels with IGNORE_INDEX; attention_mask 1 on tokens."""
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad([b["input_ids"] for b in items], batch_first=True, padding_value=items[0]["pad_id"])
    labels = pad([b["labels"] for b in items], batch_first=True, padding_value=IGNORE_INDEX)
    mask = pad([torch.ones_like(b["input_ids"]) for b in items], batch_first=True, padding_value=0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
