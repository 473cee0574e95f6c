"""Does a trained SAM condition on its audio? A quick diagnostic, not a paper figure.

Prints, for one trained run: the mean norm of the connector's audio tokens against the LM's text
embeddings, the cosine between two inputs' mean audio tokens, and whether greedy answers differ.
A near-1 cosine and identical answers mean the LM sees the audio as a constant prefix.

    python experiments/check_audio_conditioning.py runs/<hash>-cpu [--seed 0]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from sam.model import SAM


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run directory (its model/ folder is loaded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the two random fbank inputs")
    args = p.parse_args(argv)
    model = SAM.from_pretrained(f"{args.run}/model").eval()
    torch.manual_seed(args.seed)
    fb = torch.randn(2, model.config.audio.target_frames, model.config.audio.num_mel_bins)
    with torch.no_grad():
        audio = model.connector(model.audio_tower(fb))
        text = model.language_model.get_input_embeddings().weight
        answers = model.generate(fb, ["What sound events are in this audio?"] * 2, max_new_tokens=12)
    print(f"audio token norm {audio.norm(dim=-1).mean():.2f} vs text embedding norm {text.norm(dim=-1).mean():.2f}")
    print(f"cosine of the two inputs' mean audio tokens {F.cosine_similarity(audio[0].mean(0), audio[1].mean(0), dim=0):.4f}")
    print(f"greedy answers identical: {answers[0] == answers[1]} ({answers[0]!r})")


if __name__ == "__main__":
    main()
