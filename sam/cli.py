"""The `sam` command line. Each subcommand is a thin wrapper over a library function.

Every error ends the command with one line naming the key, file or path and the reason: exit 2 for
bad input (config, audio, dataset files, unwritable outputs), 1 for failures; a traceback only with
--debug (`sam.cli_support`). Outputs are checked for writability before the work starts. Batch
commands (`caption`) report each bad input on its own line and go on with the rest.

This module must never hold training, evaluation or analysis logic of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sam.cli_support import EXIT_INPUT, check_writable
from sam.config import ConfigError, ExperimentConfig, apply_overrides, load_yaml, preset

EXIT_CONFIG = EXIT_INPUT


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam",
        description="SAM: a Mamba-2 state-space audio-language model. Train it through a staged curriculum, "
        "evaluate it, ask it about audio, and probe its audio-token representations.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "prepare-data", "extract the real-audio corpus from the Debian sound packages",
             "Extract the embedded default corpus (ufoai, OpenSFX, Sonic Pi and Asterisk recordings installed "
             "with apt) into ROOT with a manifest of clips, labels, captions and licences.")
    p.add_argument("--root", default="data", help="output folder")
    p.add_argument("--from-archive", default=None, metavar="TAR",
                   help="unpack a `sam export-corpus` archive instead (for machines without the Debian packages)")

    p = _add(sub, "export-corpus", "pack a built corpus into one file for another machine",
             "Write ROOT/corpus (manifest, class map, report and every clip as lossless FLAC, about half the "
             "size of the wavs) to one tar file. `sam prepare-data --from-archive FILE` on the other machine "
             "restores the identical corpus, so its scene, feature and run caches match this machine's.")
    p.add_argument("out", help="archive file to write (.tar)")
    p.add_argument("--root", default="data", help="folder holding corpus/")

    p = _add(sub, "train", "train a model through the stage curriculum of a config",
             "Train the curriculum of a YAML config (e.g. configs/smoke.yaml), with dotted key=value overrides "
             "such as train.stages.1.lr=3e-4 or model.lora.rank=16. Stages already trained by any earlier run "
             "with the same settings are reused from RUNS_DIR; an interrupted stage resumes from its newest "
             "checkpoint. Launch under torchrun for several processes. Prints the run directory.")
    p.add_argument("--config", required=True, help="experiment YAML (top-level `preset: NAME` plus overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--runs-dir", default="runs", help="run cache folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = _add(sub, "eval", "evaluate a trained model on a data split",
             "Generate answers for a split's examples and score them: classification (mAP, accuracy, micro-F1 "
             "from text-embedding similarity), captioning (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE when CoreNLP "
             "is configured) and multiple choice (MMAU string match). Writes metrics.json and predictions.csv.")
    _model_args(p)
    p.add_argument("--config", default=None, help="experiment YAML for the data settings (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="which split")
    p.add_argument("--tasks", nargs="+", default=["classification", "closed", "open", "caption", "reasoning"], help="tasks to evaluate")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many examples (0 = all)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval-<split>, or ./eval-<split>)")

    p = _add(sub, "caption", "describe audio files in one sentence each",
             "Caption each AUDIO file with a trained model (greedy decoding). Unreadable files are reported "
             "and skipped; the exit code is 1 if any failed.")
    _model_args(p)
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    p.add_argument("--instruction", default="Write a caption for the audio clip.", help="the instruction given to the model")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens")
    p.add_argument("--batch-size", type=int, default=8, help="files decoded and answered together (bounds memory)")

    p = _add(sub, "ask", "ask a question about an audio file",
             "Answer QUESTION about AUDIO with a trained model (greedy decoding).")
    _model_args(p)
    p.add_argument("audio", help="audio file")
    p.add_argument("question", help="the question, in plain text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens")

    p = _add(sub, "probe", "measure audio-token rank, similarity and SSM state updates",
             "Run audio through a trained model with hooks on the named SITES (e.g. encoder.out connector.out "
             "'lm.layers.*') and write one CSV row per clip and site: tau-effective rank, effective rank and "
             "mean pairwise cosine similarity of the audio tokens; with --state, also the Mamba-2 state-update "
             "distance between adjacent audio tokens per LM layer.")
    _model_args(p)
    p.add_argument("--audio", nargs="+", required=True, help="audio files")
    p.add_argument("--sites", nargs="+", default=["connector.out", "lm.layers.*"], help="probe sites; * matches layer numbers")
    p.add_argument("--tau", type=float, default=0.99, help="energy fraction for the tau-effective rank")
    p.add_argument("--state", action="store_true", help="also compute state-update distances (mean per clip and LM layer)")
    p.add_argument("--instruction", default="Write a caption for the audio clip.", help="text after the audio tokens")
    p.add_argument("--out", required=True, help="CSV to write")

    p = _add(sub, "probe-lm", "measure token rank, similarity and SSM state updates inside a text LM",
             "Run texts through a local language model folder with hooks on the named SITES and write one CSV row "
             "per text, site and measure: tau-effective rank, effective rank, stable rank and mean pairwise cosine "
             "similarity of the tokens (all of them, or --span); with --state (Mamba-2 models), also the state-update "
             "distance between adjacent tokens per layer. Reads a Hugging Face model folder (config.json with "
             "model_type: Mamba2, GPT-2, Llama, ...) or a state-spaces/mamba2 folder; nothing is downloaded.")
    p.add_argument("--model", required=True, help="local model folder (Hugging Face or state-spaces/mamba2 layout)")
    p.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: --model; state-spaces folders ship none)")
    texts = p.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", nargs="+", help="texts to probe, one forward pass each")
    texts.add_argument("--text-file", help="UTF-8 file with one text per line")
    p.add_argument("--sites", nargs="+", default=["lm.layers.*"],
                   help="probe sites: stable names (lm.layers.N, lm.norm_f, ...) or module paths (transformer.h.0); "
                        "* matches one name part, e.g. a layer number")
    p.add_argument("--span", default=None, metavar="START:END", help="token positions to measure (default: every token)")
    p.add_argument("--tau", type=float, default=0.99, help="energy fraction for the tau-effective rank")
    p.add_argument("--state", action="store_true", help="also compute state-update distances (Mamba-2 models)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="CSV to write")

    p = _add(sub, "data-summary", "count examples per split and task, and list the classes",
             "Print the corpus (clips, hours, classes per source), then build the examples of every split from a "
             "config's data settings and print how many there are per task and the most frequent classes.")
    p.add_argument("--config", default=None, help="experiment YAML (default: the preset given by --preset)")
    p.add_argument("--preset", default="smoke", help="preset when no --config is given")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    p = _add(sub, "convert", "write a public dataset as instruction JSON for data.json_train / data.json_test",
             "Read a dataset in its own format (AudioSet segment CSV, AudioCaps CSV, Clotho captions CSV, ESC-50 "
             "meta CSV, MMAU JSON, or OpenAQA JSON to re-root its audio) and write LTU/OpenAQA-format JSON with "
             "absolute audio paths, labels, choices and reference captions kept, for `data.source: openaqa`. "
             "Rows that cannot be used (missing fields, missing audio, unknown labels) are listed and skipped.")
    p.add_argument("format", choices=sorted(CONVERTERS), help="the input's format")
    p.add_argument("input", help="the dataset's CSV or JSON file")
    p.add_argument("--audio-dir", default=None, help="the dataset's audio folder (required except for mmau and openaqa)")
    p.add_argument("--labels", default=None, help="audioset: class_labels_indices.csv")
    p.add_argument("--dataset", default="", help="dataset name written into each item (default: the reader's)")
    p.add_argument("--out", required=True, help="JSON file to write")
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a run directory written by `sam train`")
    g.add_argument("--checkpoint", help="a SAM checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


# --------------------------------------------------------------------------------------------


def _config(path: str | None, name: str, overrides: list[str]) -> ExperimentConfig:
    cfg = load_yaml(path) if path else preset(name)
    return apply_overrides(cfg, overrides)


def _device(requested: str | None) -> str:
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(args: argparse.Namespace) -> tuple[Any, ExperimentConfig | None]:
    if args.run:
        from sam.runs import load_run

        model, exp = load_run(args.run, _device(args.device))
        return model.eval(), exp
    from sam.model import SAM

    if not (Path(args.checkpoint) / "config.json").is_file():
        raise ConfigError(f"--checkpoint {args.checkpoint}: not a SAM checkpoint directory (no config.json)")
    model = SAM.from_pretrained(args.checkpoint)
    if model.tokenizer is None:
        raise ConfigError(f"--checkpoint {args.checkpoint}: no tokenizer.json there (a SAM checkpoint keeps its tokenizer beside its weights)")
    return model.to(_device(args.device)).eval(), None


def cmd_train(args: argparse.Namespace) -> int:
    from sam.runs import train_or_load

    exp = _config(args.config, "", args.overrides)
    run_dir = train_or_load(exp, args.runs_dir, device=args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per torchrun process
        print(run_dir)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sam.data import build_examples
    from sam.evaluate import default_audio_loader, evaluate_examples

    out = check_writable(args.out or (Path(args.run) / f"eval-{args.split}" if args.run else f"eval-{args.split}"), "--out", directory=True)
    model, exp = _load_model(args)
    if args.config:
        exp = load_yaml(args.config)
    if exp is None:
        raise ConfigError("--checkpoint needs --config for the data settings (a --run knows its own)")
    examples = build_examples(exp.data, args.split, list(args.tasks))
    if args.limit:
        examples = examples[: args.limit]
    metrics, predictions = evaluate_examples(
        model,
        examples,
        batch_size=exp.train.eval_batch_size,
        max_new_tokens=exp.train.max_new_tokens,
        audio_loader=default_audio_loader(exp.data.root, exp.model.audio.sample_rate),
        config=exp.eval,
        progress=True,
    )
    from sam.checkpoint import atomic_write_bytes  # a write error names the file

    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2, default=str).encode())
    predictions.to_csv(out / "predictions.csv", index=False)
    print(json.dumps(metrics, indent=2, default=str))
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'}")
    return 0


def _load_waves(paths: list[str], sample_rate: int) -> tuple[list[Any], list[str], int]:
    from sam.audio import AudioError, load_audio

    waves, names, bad = [], [], 0
    for path in paths:
        try:
            waves.append(load_audio(path, sample_rate))
            names.append(path)
        except AudioError as e:
            print(f"sam: skipped {e}", file=sys.stderr)
            bad += 1
    return waves, names, bad


def cmd_caption(args: argparse.Namespace) -> int:
    from sam.infer import answer_files, check_request, one_line

    check_request(args.instruction, args.max_new_tokens, "--instruction", args.batch_size)
    model, _ = _load_model(args)
    bad = 0
    for name, text in answer_files(model, args.audio, args.instruction, args.max_new_tokens, args.batch_size):
        if text is None:
            bad += 1
        else:  # one line per file, whatever the model wrote
            print(f"{one_line(name)}\t{one_line(text)}", flush=True)
    return 1 if bad else 0


def cmd_ask(args: argparse.Namespace) -> int:
    from sam.infer import answer_files, check_request, one_line

    check_request(args.question, args.max_new_tokens, "question")
    model, _ = _load_model(args)
    ((_, text),) = answer_files(model, [args.audio], args.question, args.max_new_tokens, 1)
    if text is None:
        return 1
    print(one_line(text))
    return 0


def _expand_sites(patterns: list[str], available: list[str]) -> list[str]:
    from probes import expand_sites

    try:
        return expand_sites(patterns, available)
    except KeyError as e:
        raise ConfigError(f"--sites {e.args[0]}") from None


def _state_update_rows(upd: Any) -> Any:
    """`probes.state_update_distance`'s table as mean distance and relative distance per clip and LM
    layer, in the rows of `probes.token_measures` (site `lm.layers.N.mixer`)."""
    import pandas as pd

    per = upd.groupby(["clip", "layer"], as_index=False)[["distance", "relative"]].mean()
    return pd.DataFrame([{"site": f"lm.layers.{r.layer}.mixer", "part": "lm", "layer": r.layer, "clip": r.clip,
                          "measure": f"state_update_{m}", "value": getattr(r, m)}
                         for r in per.itertuples() for m in ("distance", "relative")])


def cmd_probe(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    import probes
    from sam.prompt import encode_example

    check_writable(args.out, "--out")
    model, _ = _load_model(args)
    waves, names, bad = _load_waves(args.audio, model.config.audio.sample_rate)
    if not waves:
        return 1
    sites = _expand_sites(list(args.sites), probes.site_names(model))
    device = next(model.parameters()).device
    ids = torch.tensor(encode_example(model.tokenizer, args.instruction)[0], device=device).expand(len(waves), -1)
    batch = {"fbank": model.features(waves).to(device), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    try:
        _, cache = probes.run_with_cache(model, batch, sites)
    except KeyError as e:
        raise ConfigError(f"--sites: {e.args[0]}") from None
    table = probes.token_measures(cache, sites, taus=(args.tau,))
    if args.state:
        table = pd.concat([table, _state_update_rows(probes.state_update_distance(model, batch))], ignore_index=True)
    table.insert(0, "audio", [names[int(c)] for c in table["clip"]])
    table.to_csv(args.out, index=False)
    print(f"wrote {len(table)} rows ({len(sites)} sites x {len(waves)} clips) to {args.out}")
    return 1 if bad else 0


def _load_text_lm(model_dir: str, tokenizer_dir: str | None, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) from local folders: transformers' AutoModelForCausalLM where config.json names a
    model_type, else sam.lm.MambaLM (the state-spaces/mamba2 layout); AutoTokenizer from `tokenizer_dir`."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {model_dir}: no config.json there (a local Hugging Face or state-spaces/mamba2 model folder)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model {model_dir}: config.json is not JSON ({e})") from None
    if "model_type" in config:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one output line per command, errors included
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    else:
        from sam.lm import MambaLM

        model = MambaLM.from_pretrained(path)
    tok_dir = Path(tokenizer_dir or model_dir)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        flag = "--tokenizer" if tokenizer_dir else "--model (give --tokenizer)"
        raise ConfigError(f"{flag} {tok_dir}: no tokenizer could be loaded there ({str(e).splitlines()[0]})") from None
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # ids past the embedding would index out of range on the first text
        raise ConfigError(f"--tokenizer {tok_dir}: {len(tokenizer)} tokens, but the model embeds only {rows}; use the model's own tokenizer")
    return model.to(device).eval(), tokenizer


def _parse_span(span: str | None) -> tuple[int, int] | None:
    if span is None:
        return None
    try:
        start, end = (int(v) for v in span.split(":"))
    except ValueError:
        raise ConfigError(f"--span {span!r}: expected START:END token positions, e.g. 4:60") from None
    if not 0 <= start < end:
        raise ConfigError(f"--span {span!r}: needs 0 <= START < END")
    return start, end


def cmd_probe_lm(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    import probes

    check_writable(args.out, "--out")
    if args.text_file:
        try:
            texts = [line.strip() for line in Path(args.text_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--text-file {args.text_file}: cannot read it ({e})") from None
        if not texts:
            raise ConfigError(f"--text-file {args.text_file}: holds no text")
    else:
        texts = list(args.text)
    span = _parse_span(args.span)
    device = _device(args.device)
    model, tokenizer = _load_text_lm(args.model, args.tokenizer, device)
    if args.state:
        from probes.models import find_backbone

        try:
            find_backbone(model)
        except ValueError as e:
            raise ConfigError(f"--state: {e}") from None
    available = probes.site_names(model) + [p for p, _ in model.named_modules() if p]
    sites = _expand_sites(list(args.sites), available)
    tables, skipped = [], []
    for i, text in enumerate(tqdm(texts, desc="texts", disable=len(texts) < 10 or not sys.stderr.isatty())):
        ids = torch.tensor([tokenizer(text)["input_ids"]], dtype=torch.long, device=device)
        n = ids.shape[1]
        why = (f"{n} tokens, too few to measure" if n < 2
               else f"{n} tokens, fewer than --span end {span[1]}" if span is not None and span[1] > n else "")
        if why:  # reported at the end; the other texts go on
            skipped.append(f"text {i}: {why}")
            continue
        start, end = span if span else (0, n)
        try:
            _, cache = probes.run_with_cache(model, {"input_ids": ids}, sites)
        except KeyError as e:
            raise ConfigError(f"--sites: {e.args[0]}") from None
        for name in sites:  # every site of a text LM is a token sequence [1, n, d]: cut it to the span here
            if cache[name].dim() != 3 or cache[name].shape[1] != n:
                raise ConfigError(f"--sites {name}: holds shape {tuple(cache[name].shape)}, not [1, {n} tokens, dim]")
            cache[name] = cache[name][:, start:end]
        cache.spans = None
        table = probes.token_measures(cache, sites, taus=(args.tau,))
        if args.state:
            upd = probes.state_update_distance(model, {"input_ids": ids}, span=(start, end))
            table = pd.concat([table, _state_update_rows(upd)], ignore_index=True)
        table = table.drop(columns=["clip"])  # one text per forward: the text index replaces it
        table.insert(0, "text", i)
        tables.append(table)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not tables:
        return 1
    out = pd.concat(tables, ignore_index=True)
    out.to_csv(args.out, index=False)
    print(f"wrote {len(out)} rows ({len(sites)} sites x {len(tables)} texts) to {args.out}")
    return 1 if skipped else 0


def cmd_data_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from sam.data import build_examples
    from sam.data.types import TASKS

    from sam.data.corpus import prepare_corpus
    from sam.data.summary import format_summary

    exp = _config(args.config, args.preset, args.overrides)
    openaqa = exp.data.source == "openaqa"
    if openaqa:  # no corpus: the instruction JSON is the data
        print(f"instruction JSON: train/valid {exp.data.json_train or '(data.json_train not set)'}, "
              f"test {exp.data.json_test or '(data.json_test not set)'}\n")
    else:
        prepare_corpus(exp.data, progress=False)
        print(format_summary(exp.data.root) + "\n")
    rows, labels = [], pd.Series(dtype=int)
    for split in ("train", "valid", "test"):
        if openaqa and split == "test" and not exp.data.json_test:
            continue
        examples = build_examples(exp.data, split, list(TASKS))
        counts = pd.Series([e.task for e in examples]).value_counts()
        rows.append({"split": split, "examples": len(examples), **{t: int(counts.get(t, 0)) for t in TASKS}})
        if split == "train":
            labels = pd.Series([label for e in examples if e.task == "classification" for label in e.labels]).value_counts()
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\n{len(labels)} classes in train; most frequent:")
    print(labels.head(15).rename("clips").to_markdown())
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from sam.data.corpus import prepare_corpus

    check_writable(args.root, "--root", directory=True)
    if args.from_archive:
        from sam.data.archive import import_corpus

        print(f"[corpus] restored {import_corpus(args.from_archive, args.root)} from {args.from_archive}")
    else:
        prepare_corpus(args.root)
    return 0


def cmd_export_corpus(args: argparse.Namespace) -> int:
    from sam.data.archive import export_corpus

    out = export_corpus(args.root, check_writable(args.out, "out"))
    print(f"[corpus] wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _read_audioset(args: argparse.Namespace) -> Any:
    from sam.data.readers import read_audioset

    if not args.labels:
        raise ConfigError("--labels: required for audioset (class_labels_indices.csv)")
    return read_audioset(args.input, args.labels, args.audio_dir)


def _reader(name: str, needs_audio_dir: bool = True) -> Any:
    def read(args: argparse.Namespace) -> Any:
        from sam.data import readers

        if needs_audio_dir and not args.audio_dir:
            raise ConfigError(f"--audio-dir: required for {args.format}")
        return getattr(readers, name)(args.input, args.audio_dir)
    return read


CONVERTERS = {
    "audioset": _read_audioset, "audiocaps": _reader("read_audiocaps"), "clotho": _reader("read_clotho"),
    "esc50": _reader("read_esc50"), "mmau": _reader("read_mmau", False), "openaqa": _reader("read_openaqa", False),
}


def cmd_convert(args: argparse.Namespace) -> int:
    from sam.data.readers import write_openaqa_json

    if args.audio_dir and not Path(args.audio_dir).is_dir():
        raise ConfigError(f"--audio-dir: {args.audio_dir} is not a directory")
    check_writable(args.out, "--out")
    examples, report = CONVERTERS[args.format](args)
    print(str(report), file=sys.stderr)
    try:
        n = write_openaqa_json(examples, args.out, args.dataset)
    except ValueError as e:  # composed scenes (an exported MMAU JSON without audio files) have no file to name
        raise ConfigError(f"{args.input}: {e}") from None
    print(f"wrote {n} items to {args.out}")
    return 0 if n else 1


COMMANDS = {
    "prepare-data": cmd_prepare_data,
    "export-corpus": cmd_export_corpus,
    "train": cmd_train,
    "eval": cmd_eval,
    "caption": cmd_caption,
    "ask": cmd_ask,
    "probe": cmd_probe,
    "probe-lm": cmd_probe_lm,
    "data-summary": cmd_data_summary,
    "convert": cmd_convert,
}


def main(argv: list[str] | None = None) -> int:
    from sam.cli_support import run_command

    args = build_parser().parse_args(argv)
    return run_command(args.command, COMMANDS[args.command], args, args.debug)


if __name__ == "__main__":
    sys.exit(main())
