"""Why does SAM ignore its audio? Train the preset's small LM under recipe variants and measure.

Each variant is a list of config changes on the preset's curriculum (run cache shared, so the
text-only LM stage and the encoder pretraining train once per seed). After stage 4, on the first
`--clips` test scenes, it measures:
- classification and caption answers with each scene's own audio and with another scene's audio
  (scene i gets scene i + n/2's audio; same prompts), generated here and scored with ``--score``
  (the text scorers need not be on the machine that trains);
- the classification response loss with own vs other audio (teacher forced, no decoding);
- where the class information goes: one logistic regression per class on the mean-pooled encoder
  output (the gate's probe ceiling), on the input log-mel's per-band mean and standard deviation (the
  floor a trained encoder should beat), and on the LM's residual stream at the last audio token and
  at the last prompt token (what the answer is decoded from), per layer, fit on `--probe-train`
  training scenes;
- the audio tokens' norm against the text embeddings', their raw tau-rank and the share of their
  energy that varies across clips.

    python experiments/check_learning_curve.py --preset gpu --variants recipe,steps_x3   # measure
    python experiments/check_learning_curve.py --preset gpu --score                      # score, write
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lib.variants import AUDIO_STAGES, VARIANTS, variant_config


def _batches(model: Any, exp: Any, tokenizer: Any, examples: list[Any], batch_size: int):
    from sam.data.dataset import SAMDataset, collate

    ds = SAMDataset(examples, exp.model.audio, tokenizer, exp.data.root, cache_dir=Path(exp.data.root) / "features")
    device = next(model.parameters()).device
    for i in range(0, len(ds), batch_size):
        batch = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
        yield {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def forward_pass(model: Any, exp: Any, tokenizer: Any, examples: list[Any], batch_size: int) -> dict[str, Any]:
    """One teacher-forced pass over `examples`: the response loss (mean over answer tokens), the audio
    tokens entering the LM [clips, N, d], and per example the probe features: the mean-pooled encoder
    output, and each LM layer's residual stream at the last audio token and at the last prompt token
    (the position the first answer token is predicted from)."""
    import torch

    import probes
    from lib.probing import log_mel_stats

    layers = len(model.language_model.backbone.layers)
    lm_sites = ["lm.embed", *[f"lm.layers.{i}" for i in range(layers)]]
    feats: dict[str, list[np.ndarray]] = {}
    tokens, total, count = [], 0.0, 0
    with torch.no_grad():
        for batch in _batches(model, exp, tokenizer, examples, batch_size):
            (loss, _), cache = probes.run_with_cache(model, batch, ["encoder.out", "connector.out", *lm_sites])
            n = int((batch["labels"] != -100).sum())
            total, count = total + float(loss) * n, count + n
            tokens.append(cache["connector.out"].float().cpu())
            feats.setdefault("encoder_mean", []).append(cache["encoder.out"].float().mean(dim=(1, 2)).cpu().numpy())
            feats.setdefault("fbank_stats", []).append(log_mel_stats(batch["fbank"].float()).cpu().numpy())
            n_audio = model.num_audio_tokens(batch["fbank"].shape[1])
            prompt_len = (batch["labels"] == -100).long().cumprod(dim=1).sum(dim=1)  # tokens before the response
            rows = torch.arange(len(prompt_len), device=prompt_len.device)
            for name in lm_sites:
                h = cache[name].float()
                feats.setdefault(f"{name}@audio_last", []).append(h[:, n_audio - 1].cpu().numpy())
                feats.setdefault(f"{name}@prompt_last", []).append(h[rows, n_audio + prompt_len - 1].cpu().numpy())
    return {"loss": total / count, "audio_tokens": torch.cat(tokens), "features": {k: np.concatenate(v) for k, v in feats.items()}}


def probe_maps(train: dict[str, np.ndarray], test: dict[str, np.ndarray], y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Test mAP of one standardized logistic regression per class, for every feature site."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sam.eval.metrics import mean_average_precision

    keep = (y_train.sum(0) > 0) & (y_train.sum(0) < len(y_train))
    out = {}
    for site in train:
        # serial on purpose: joblib's process pool hung on a sandboxed GPU machine (gVisor) and cost a whole run
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=300, C=0.1)))
        clf.fit(train[site], y_train[:, keep])
        scores = np.zeros((len(y_test), y_train.shape[1]))
        scores[:, keep] = clf.predict_proba(test[site])
        out[site] = 100 * mean_average_precision(y_test, scores)[0]
    return out


def _phase(record: dict[str, Any], path: Path, what: str, t0: float) -> None:
    """Write the record so far (a killed job keeps what it measured) and log the phase."""
    record.setdefault("phases_s", {})[what] = round(time.time() - t0, 1)
    path.write_text(json.dumps(record, indent=1))
    print(f"[curve] {record['variant']}: {what} done at {time.time() - t0:.0f} s", flush=True)


def measure(args: argparse.Namespace, name: str, path: Path) -> dict[str, Any]:
    """Train (or load) one variant and measure it, writing the record to `path` after each phase."""
    import torch

    from lib.probing import audio_token_stats
    from probes import tau_effective_rank
    from sam.data import build_examples
    from sam.data.archive import transcoded
    from sam.data.dataset import SAMDataset
    from sam.eval import generate_predictions, label_matrix
    from sam.eval.annotate import other_audio
    from sam.train.runs import get_tokenizer, stage_model, train_or_load

    exp = variant_config(args.preset, name, args.seed, args.set)
    t0 = time.time()
    run_dir = train_or_load(exp, args.runs)
    record: dict[str, Any] = {
        "variant": name,
        "changes": VARIANTS[name][1],
        "set": list(args.set),
        "what": VARIANTS[name][0],
        "preset": args.preset,
        "seed": args.seed,
        "run": run_dir.name,
        "audio_steps": sum(s.steps for s in exp.train.stages if s.name in AUDIO_STAGES),
        "n_train": exp.data.n_train,
        "corpus_transcode": transcoded(exp.data.root),
        "complete": False,
    }
    _phase(record, path, "train", t0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = stage_model(run_dir, "stage4", device).eval()
    tok = get_tokenizer(exp, args.runs)
    test = {task: build_examples(exp.data, "test", [task])[: args.clips] for task in ("classification", "caption")}
    bs, n_new = args.batch_size, exp.train.max_new_tokens
    answers = {}
    features = SAMDataset([], exp.model.audio, tok, exp.data.root, cache_dir=Path(exp.data.root) / "features")

    def generate(fbanks: list[Any], prompts: list[str], n: int) -> list[str]:
        return model.generate(torch.stack(fbanks), prompts, max_new_tokens=n)

    for task, exs in test.items():
        for cond, items in (("own", exs), ("other_audio", other_audio(exs))):
            gen = generate_predictions(generate, items, batch_size=bs, max_new_tokens=n_new, audio_loader=features.features)
            answers[f"{task}/{cond}"] = gen["prediction"].tolist()
    record.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        answers=answers,
        test={task: [ex.id for ex in exs] for task, exs in test.items()},
    )
    _phase(record, path, "generate", t0)
    cls = test["classification"]
    own = forward_pass(model, exp, tok, cls, bs)
    record.update(
        loss_own=own["loss"],
        loss_other_audio=forward_pass(model, exp, tok, other_audio(cls), bs)["loss"],
        **audio_token_stats(model, own["audio_tokens"]),
        raw_tau_rank=float(np.mean([tau_effective_rank(x, tau=0.99) for x in own["audio_tokens"]])),
    )
    _phase(record, path, "losses", t0)
    train_cls = build_examples(exp.data, "train", ["classification"])[: args.probe_train]
    classes = sorted({c for ex in train_cls + cls for c in ex.labels})
    feats_train = forward_pass(model, exp, tok, train_cls, bs)["features"]
    record.update(
        classes=classes,
        complete=True,
        probe_map=probe_maps(feats_train, own["features"], label_matrix(train_cls, classes), label_matrix(cls, classes)),
    )
    _phase(record, path, "probes", t0)
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpu")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=500, help="test scenes measured per task")
    p.add_argument("--probe-train", type=int, default=1000, help="training scenes the linear probes are fit on")
    p.add_argument("--set", nargs="*", default=[], help="extra dotted config overrides for every variant (key=value)")
    p.add_argument("--batch-size", type=int, default=64, help="clips per forward / generate batch while measuring")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--records", type=Path, default=Path("runs/curve"), help="where measurement records go / are read")
    p.add_argument("--score", action="store_true", help="score the records and write the outputs")
    p.add_argument("--out", type=Path, default=None, help="output folder (default figures/<preset>)")
    args = p.parse_args(argv)
    if args.score:
        from learning_curve_report import write_report

        write_report(args)
        return
    args.records.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        path = args.records / f"{args.preset}-{name}-s{args.seed}.json"
        record = measure(args, name, path)
        print(
            f"[curve] {name}: loss own {record['loss_own']:.3f} vs other {record['loss_other_audio']:.3f}; "
            f"probe mAP {json.dumps({k: round(v, 1) for k, v in record['probe_map'].items()})} -> {path}",
            flush=True,
        )


if __name__ == "__main__":
    main()
