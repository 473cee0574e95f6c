"""Figure 1: the SAM architecture (audio encoder grid -> token layout -> connector -> Mamba-2 LM).

Every shape, token count and parameter count comes from the real modules: `sam.SAM` is built from
the preset's config on PyTorch's meta device (no memory, no training) once per LM size and layout,
and its parts are counted. Compares: tokens per clip of layouts (a) concat, (b) time-major and
(c) freq-major, and where the parameters sit for the three LM sizes.
"""

from __future__ import annotations

import json

import pandas as pd
import torch

from lib import common, paper_numbers
from sam.config import PAPER_LM_NAMES
from sam.model import SAM
from sam.model.lm import config_from_mamba_ssm
from sam.train.runs import get_tokenizer

LAYOUTS = {"concat": "(a) concat", "time_major": "(b) time-major", "freq_major": "(c) freq-major"}


def measure(s: common.Settings, size: str, layout: str) -> tuple[list[dict], dict]:
    cfg = common.run_config(s, size, changes=[f"model.connector.layout={layout}"])
    if cfg.model.lm_checkpoint:  # paper preset: the checkpoint's own shape, without loading its weights
        ckpt = f"{cfg.model.lm_checkpoint}/config.json"
        cfg.model.lm, cfg.model.lm_checkpoint = config_from_mamba_ssm(json.load(open(ckpt)), ckpt), ""
    with torch.device("meta"):
        model = SAM(cfg.model, get_tokenizer(cfg, s.runs))
    lm = dict(model.language_model.named_parameters())
    t, f = model.audio_tower.grid_shape(cfg.model.audio.target_frames)
    values = {
        "tokens_per_clip": model.num_audio_tokens(),
        "tokens_per_10s": model.num_audio_tokens(1024),  # EAT/AST pad a 10 s clip to 1024 fbank frames
        "params_encoder": sum(p.numel() for p in model.audio_tower.parameters()),
        "params_connector": sum(p.numel() for p in model.connector.parameters()),
        "params_lm": sum(p.numel() for n, p in lm.items() if "lora_" not in n),
        "params_lora": sum(p.numel() for n, p in lm.items() if "lora_" in n),
        "grid_time": t,
        "grid_freq": f,
        "encoder_dim": model.audio_tower.embed_dim,
        "encoder_depth": len(model.audio_tower.blocks),
        "lm_d_model": cfg.model.lm.d_model,
        "lm_n_layer": cfg.model.lm.n_layer,
        "separator_tokens": len(model.separator_ids),
        "clip_seconds": cfg.model.audio.clip_seconds,
        "fbank_frames": cfg.model.audio.target_frames,
        "mel_bins": cfg.model.audio.num_mel_bins,
        "lora_rank": cfg.model.lora.rank,
    }
    rows = [dict(preset=s.preset, lm_size=size, layout=layout, quantity=k, value=float(v)) for k, v in values.items()]
    return rows, {"cfg": cfg, **values}


def draw_architecture(ax, w: pd.DataFrame, sizes: list[str]) -> None:
    a = w.loc[(sizes[0], "concat")]
    shapes = "\n".join(f"{z}: {w.loc[(z, 'concat')].lm_d_model:.0f} x {w.loc[(z, 'concat')].lm_n_layer:.0f}" for z in sizes)
    boxes = [
        f"audio clip\n{a.clip_seconds:g} s, 16 kHz",
        f"Kaldi fbank\n{a.fbank_frames:.0f} x {a.mel_bins:.0f}",
        f"audio encoder\nViT {a.encoder_depth:.0f} blocks, {a.encoder_dim:.0f}-d\n{a.params_encoder / 1e6:.1f} M params",
        f"patch grid\n{a.grid_time:.0f} x {a.grid_freq:.0f} x {a.encoder_dim:.0f}",
        "token layout\n" + "\n".join(f"{LAYOUTS[k]}: {w.loc[(sizes[0], k)].tokens_per_clip:.0f} tok" for k in LAYOUTS),
        "connector\n2-layer MLP\n-> LM width",
        f"Mamba-2 LM\n+ LoRA r={a.lora_rank:.0f}\nd_model x layers\n{shapes}",
        "text\n(greedy)",
    ]
    ax.set_xlim(0, len(boxes)), ax.set_ylim(0, 1), ax.axis("off")
    for i, text in enumerate(boxes):
        ax.text(
            i + 0.5,
            0.5,
            text,
            ha="center",
            va="center",
            fontsize=8,
            bbox=dict(boxstyle="round,pad=0.4", fc="#e8f0fa" if i in (2, 5, 6) else "white", ec="#345"),
        )
        if i:
            ax.annotate("", xy=(i + 0.1, 0.5), xytext=(i - 0.1, 0.5), arrowprops=dict(arrowstyle="-|>", color="#345"))
    ax.set_title("SAM: audio encoder -> token layout -> connector -> Mamba-2 LM (shapes from the config)")


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): the diagram, tokens per layout, parameters per part."""
    sizes = common.sizes_in(data)
    w = data.pivot_table(index=["lm_size", "layout"], columns="quantity", values="value")
    fig, ax = common.mosaic("AA;BC", width=14, height=6.5, height_ratios=[1, 2])
    draw_architecture(ax["A"], w, sizes)
    tok = w.loc[sizes[0]].loc[list(LAYOUTS)]
    bars = ax["B"].bar([LAYOUTS[k] for k in tok.index], tok.tokens_per_clip, color=["#2a6", "#c63", "#c63"])
    ax["B"].bar_label(bars, fmt="%d")
    ax["B"].set(
        ylabel="LM input tokens per clip (count)",
        xlabel="token layout",
        title=f"Layouts (b)/(c) feed the LM {tok.tokens_per_clip.iloc[1] / tok.tokens_per_clip.iloc[0]:.0f}x more tokens "
        f"({tok.clip_seconds.iloc[0]:g} s clip)",
    )
    comp = w.xs("concat", level="layout").loc[sizes, ["params_encoder", "params_connector", "params_lm", "params_lora"]] / 1e6
    comp.columns = ["audio encoder", "connector (a)", "Mamba-2 LM", "LoRA"]
    comp.plot.bar(ax=ax["C"], logy=True, rot=0)
    ax["C"].set(
        ylabel="parameters (millions, log scale)",
        xlabel="LM size (stand-in for 130M / 780M / 2.7B)",
        title="Where the parameters are, by LM size",
    )
    ax["C"].legend(title="component", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("fig1_architecture", __doc__, needs=["mamba_checkpoints", "tokenizer"], argv=argv)
    rows, info, sizes = [], {}, common.lm_sizes(s)
    for size in sizes:
        for layout in LAYOUTS:
            r, info[(size, layout)] = measure(s, size, layout)
            rows += r
    data = pd.DataFrame(rows)
    paper_tok = {k: f"{v}" + (" + separators" if k != "concat" else "") for k, v in paper_numbers.TOKENS_PER_10S.items()}
    table = pd.DataFrame(
        [
            {
                "LM size": z,
                "layout": LAYOUTS[k],
                "tokens/clip": int(info[(z, k)]["tokens_per_clip"]),
                "tokens/10 s": int(info[(z, k)]["tokens_per_10s"]),
                "paper tokens/10 s": paper_tok[k],
                "LM params (M)": info[(z, k)]["params_lm"] / 1e6,
                "paper LM": PAPER_LM_NAMES[z],
                "encoder params (M)": info[(z, k)]["params_encoder"] / 1e6,
                "paper encoder (M)": paper_numbers.EAT_BASE_PARAMS / 1e6,
                "connector params (M)": info[(z, k)]["params_connector"] / 1e6,
                "LoRA params (M)": info[(z, k)]["params_lora"] / 1e6,
            }
            for z in sizes
            for k in LAYOUTS
        ]
    )
    notes = (
        "Counts are of the real modules (`sam.SAM` on the meta device). Separator tokens are the "
        'tokenizer\'s tokens for the text "&&". Paper: EAT-base encoder, Mamba-2 130M/780M/2.7B.'
    )
    cfgs = {f"{z}/{k}": info[(z, k)]["cfg"] for z in sizes for k in LAYOUTS}
    return common.write_outputs(
        s, data, plot(data), table, title="Figure 1: architecture, shapes and token counts", notes=notes, configs=cfgs
    )


if __name__ == "__main__":
    main()
