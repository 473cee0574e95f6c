"""`sam probe` (a SAM run) and `sam probe-lm` (any local text LM folder): thin wrappers over `probes`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sam.cli.common import device_for, expand_sites_or_fail, load_model, load_waves, parse_span
from sam.cli.support import check_writable
from sam.config import ConfigError


def state_update_rows(upd: Any) -> Any:
    """`probes.state_update_distance`'s table as mean distance and relative distance per clip and LM
    layer, in the rows of `probes.token_measures` (site `lm.layers.N.mixer`)."""
    import pandas as pd

    from probes.tables import state_update_means

    per = state_update_means(upd).sort_values(["clip", "layer"])  # rows by clip, then layer
    return pd.DataFrame(
        [
            {
                "site": f"lm.layers.{r.layer}.mixer",
                "part": "lm",
                "layer": r.layer,
                "clip": r.clip,
                "measure": f"state_update_{m}",
                "value": getattr(r, m),
            }
            for r in per.itertuples()
            for m in ("distance", "relative")
        ]
    )


def cmd_probe(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    import probes
    from sam.prompt import encode_example

    check_writable(args.out, "--out")
    model, _ = load_model(args)
    waves, names, bad = load_waves(args.audio, model.config.audio.sample_rate)
    if not waves:
        return 1
    sites = expand_sites_or_fail(list(args.sites), probes.site_names(model))
    device = next(model.parameters()).device
    ids = torch.tensor(encode_example(model.tokenizer, args.instruction)[0], device=device).expand(len(waves), -1)
    batch = {"fbank": model.features(waves).to(device), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    try:
        _, cache = probes.run_with_cache(model, batch, sites)
    except KeyError as e:
        raise ConfigError(f"--sites: {e.args[0]}") from None
    table = probes.token_measures(cache, sites, taus=(args.tau,))
    if args.state:
        table = pd.concat([table, state_update_rows(probes.state_update_distance(model, batch))], ignore_index=True)
    table.insert(0, "audio", [names[int(c)] for c in table["clip"]])
    table.to_csv(args.out, index=False)
    print(f"wrote {len(table)} rows ({len(sites)} sites x {len(waves)} clips) to {args.out}")
    return 1 if bad else 0


def load_text_lm(model_dir: str, tokenizer_dir: str | None, device: str) -> tuple[Any, Any]:
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
        from sam.model.lm import MambaLM

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
        raise ConfigError(
            f"--tokenizer {tok_dir}: {len(tokenizer)} tokens, but the model embeds only {rows}; use the model's own tokenizer"
        )
    return model.to(device).eval(), tokenizer


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
    span = parse_span(args.span)
    device = device_for(args.device)
    model, tokenizer = load_text_lm(args.model, args.tokenizer, device)
    if args.state:
        from probes.models import find_backbone

        try:
            find_backbone(model)
        except ValueError as e:
            raise ConfigError(f"--state: {e}") from None
    available = probes.site_names(model) + [p for p, _ in model.named_modules() if p]
    sites = expand_sites_or_fail(list(args.sites), available)
    tables, skipped = [], []
    for i, text in enumerate(tqdm(texts, desc="texts", disable=len(texts) < 10 or not sys.stderr.isatty())):
        ids = torch.tensor([tokenizer(text)["input_ids"]], dtype=torch.long, device=device)
        n = ids.shape[1]
        why = (
            f"{n} tokens, too few to measure"
            if n < 2
            else f"{n} tokens, fewer than --span end {span[1]}"
            if span is not None and span[1] > n
            else ""
        )
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
            table = pd.concat([table, state_update_rows(upd)], ignore_index=True)
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
