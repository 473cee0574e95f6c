"""Does a trained SAM condition on its audio? A quick diagnostic, not a paper figure.

For one trained run, on the first validation scenes of a task (real rendered audio):
- the response loss with each clip's own audio against the same batch with the audio rolled by one
  clip (every prompt gets another scene's audio); a model that ignores the audio scores both alike;
- how many distinct greedy answers the scenes get (1 = the same text for every clip);
- the mean norm of the connector's audio tokens against the LM's text embeddings, and the share of
  their energy that varies across clips (the rest is a prefix common to all clips).

    python experiments/check_audio_conditioning.py runs/<hash>-cpu [--task classification] [--clips 64]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lib.probing import audio_token_stats


def main(argv: list[str] | None = None) -> dict[str, float]:
    from sam.train.runs import get_tokenizer, load_run

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a run directory (runs/<hash>-<device>)")
    p.add_argument("--task", default="classification", help="example task to score (default: classification)")
    p.add_argument("--clips", type=int, default=64, help="validation scenes to use (default: 64)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    model, exp = load_run(args.run)
    model.eval()
    data = task_data(exp, args.task, get_tokenizer(exp, args.run.parent))
    examples = data.valid[: args.clips]
    if not examples:
        raise SystemExit(f"{args.run}: no validation examples of task {args.task!r} (data.n_valid = {exp.data.n_valid})")
    ds = data.make_dataset(examples)
    items = [ds[i] for i in range(len(ds))]
    own = rolled = 0.0
    rolled_clips = 0  # a batch of one clip has no other clip to borrow audio from
    answers: list[str] = []
    tokens = []
    with torch.no_grad():
        for i in range(0, len(items), args.batch_size):
            batch = data.collate(items[i : i + args.batch_size])
            n = len(batch["examples"])
            own += float(model(batch)[0]) * n
            if n > 1:
                rolled += float(model({**batch, "fbank": batch["fbank"].roll(1, 0)})[0]) * n
                rolled_clips += n
            tokens.append(model.encode_audio(batch["fbank"]))
            answers += model.generate(batch["fbank"], [ex.instruction for ex in batch["examples"]], max_new_tokens=exp.train.max_new_tokens)
    stats = audio_token_stats(model, torch.cat(tokens))
    out = {
        "loss_own_audio": own / len(items),
        "loss_other_audio": rolled / rolled_clips if rolled_clips else float("nan"),
        "distinct_answers": float(len(set(answers))),
        "clips": float(len(items)),
        "audio_token_norm": stats["audio_token_norm"],
        "text_embedding_norm": stats["text_embedding_norm"],
        "audio_energy_varying_across_clips": stats["energy_varying_across_clips"],
    }
    print(f"{args.task} response loss: own audio {out['loss_own_audio']:.4f} vs another clip's audio {out['loss_other_audio']:.4f}")
    print(f"distinct greedy answers: {len(set(answers))} of {len(items)} clips (e.g. {answers[0]!r})")
    print(
        f"audio token norm {out['audio_token_norm']:.2f} vs text embedding norm {out['text_embedding_norm']:.2f}; "
        f"{100 * out['audio_energy_varying_across_clips']:.1f}% of the audio tokens' energy varies across clips"
    )
    return out


def task_data(exp: Any, task: str, tokenizer: Any) -> Any:
    """One task's training and validation examples, with the trainer's own dataset builder and collate."""
    from sam.config import StageConfig
    from sam.train.runs import stage_data

    one = StageConfig(name="check", tasks=[task], trainable=["connector"])
    return stage_data(replace(exp, train=replace(exp.train, stages=[one])), 0, tokenizer)


if __name__ == "__main__":
    main()
