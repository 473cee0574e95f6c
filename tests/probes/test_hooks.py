"""Hooks read without changing anything, and the stable names carry what DESIGN.md says they carry."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from torch import nn

import probes
from probes.hooks import resolve_sites
from tests.support.models import tiny_hf, tiny_lm, tiny_sam_and_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(b: int = 2, t: int = 21, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [tiny_hf, tiny_lm])
def test_hooked_forward_equals_unhooked_bit_for_bit(build):
    model = build()
    inputs = {"input_ids": _ids()}
    with torch.no_grad():
        plain = model(**inputs).logits
    names = re.compile(r"lm\..*|.*in_proj|.*out_proj")
    for kwargs in ({}, {"device": "cpu", "dtype": torch.float64}, {"detach": False}):
        out, cache = probes.run_with_cache(model, inputs, names, **kwargs)
        assert torch.equal(out.logits, plain)
        assert len(cache) == 10 and not cache.silent
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)  # hooks are gone afterwards


def test_stable_lm_names_match_the_models_own_hidden_states():
    model = tiny_hf()
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True)
    _, cache = probes.run_with_cache(model, {"input_ids": ids})
    assert torch.equal(cache["lm.embed"], model.backbone.embeddings(ids))
    # transformers < 5.25 lists the stream after each layer; from 5.25 on the embeddings come first and the last
    # layer's stream is replaced by the normed output: compare every layer the installed version exposes
    hs = ref.hidden_states
    after_layers = hs[1:-1] if torch.equal(hs[0], cache["lm.embed"]) else hs[:-1]
    assert len(after_layers) >= 1
    for i, h in enumerate(after_layers):
        assert torch.equal(cache[f"lm.layers.{i}"], h)
    assert torch.equal(cache["lm.norm_f"], ref.hidden_states[-1])
    assert torch.equal(cache["lm.layers.1"], cache["lm.layers.0"] + cache["lm.layers.1.mixer"])


class FusedResidualLM(nn.Module):
    """mamba_ssm's MixerModel layout (Add -> Norm -> Mixer, blocks return (mixer out, residual),
    the last add fused into norm_f), built from a MambaLM's own norms and mixers."""

    class Block(nn.Module):
        def __init__(self, block: nn.Module) -> None:
            super().__init__()
            self.norm, self.mixer = block.norm, block.mixer

        def forward(self, hidden, residual=None):
            residual = hidden if residual is None else hidden + residual
            return self.mixer(self.norm(residual)), residual

    class Backbone(nn.Module):
        def __init__(self, lm: nn.Module) -> None:
            super().__init__()
            self.embedding, self.norm_f = lm.backbone.embedding, lm.backbone.norm_f
            self.layers = nn.ModuleList([FusedResidualLM.Block(b) for b in lm.backbone.layers])

        def forward(self, input_ids):
            hidden, residual = self.embedding(input_ids), None
            for layer in self.layers:
                hidden, residual = layer(hidden, residual)
            return self.norm_f(hidden + residual)

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.backbone = FusedResidualLM.Backbone(lm)

    def forward(self, input_ids):
        return self.backbone(input_ids)


def test_residual_stream_of_tuple_returning_blocks_is_hidden_plus_residual():
    lm = tiny_lm()
    fused = FusedResidualLM(lm)
    ids = _ids()
    _, ours = probes.run_with_cache(lm, {"input_ids": ids})
    _, theirs = probes.run_with_cache(fused, ids)
    for name in ("lm.embed", "lm.layers.0", "lm.layers.1", "lm.layers.1.mixer", "lm.norm_f"):
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-6, atol=1e-6)
    assert probes.state_update_distance(fused, ids).equals(probes.state_update_distance(lm, {"input_ids": ids}))


def test_names_filters_resolve_strings_lists_regexes_callables_and_module_paths():
    model = tiny_lm()
    assert list(resolve_sites(model, "lm.layers.1")) == ["lm.layers.1"]
    assert list(resolve_sites(model, ["lm.embed", "backbone.layers.0.mixer.out_proj"])) == ["lm.embed", "backbone.layers.0.mixer.out_proj"]
    assert list(resolve_sites(model, re.compile(r"lm\.layers\.\d+"))) == ["lm.layers.0", "lm.layers.1"]
    assert set(resolve_sites(model, lambda n: n.endswith("conv1d"))) == {"backbone.layers.0.mixer.conv1d", "backbone.layers.1.mixer.conv1d"}
    assert probes.site_names(model)[0] == "lm.embed"
    with pytest.warns(UserWarning, match="never ran"):  # the mixers call F.conv1d with the weights
        _, cache = probes.run_with_cache(model, {"input_ids": _ids()}, ["lm.embed", "backbone.layers.0.mixer.conv1d"])
    assert cache.silent == ["backbone.layers.0.mixer.conv1d"] and list(cache) == ["lm.embed"]
    with pytest.raises(KeyError, match="unknown probe site 'lm.layer.1'"):
        resolve_sites(model, "lm.layer.1")


def test_context_manager_records_spans_from_the_mask_and_slices_audio_tokens():
    model = tiny_hf()
    ids = _ids(2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0
    with probes.hooked(model, ["lm.layers.0", "backbone.layers.0.mixer.in_proj"]) as cache:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert cache.spans.tolist() == [[3, 16], [0, 16]]
    assert [t.shape[0] for t in cache.tokens("lm.layers.0")] == [13, 16]
    assert torch.equal(cache.tokens("lm.layers.0")[0], cache["lm.layers.0"][0, 3:])
    _, explicit = probes.run_with_cache(model, {"input_ids": ids}, "lm.layers.1", span=(4, 10))
    assert [t.shape[0] for t in explicit.tokens("lm.layers.1")] == [6, 6]


def test_token_measures_table_is_tidy_per_site_clip_and_measure():
    _, cache = probes.run_with_cache(tiny_lm(), {"input_ids": _ids(3, 12)}, re.compile(r"lm\.layers\.\d+"), span=(2, 12))
    table = probes.token_measures(cache, taus=(0.9, 0.99))
    assert set(table.site) == {"lm.layers.0", "lm.layers.1"} and set(table.layer) == {0, 1}
    assert (table.tokens == 10).all() and (table.dim == 32).all()
    per = table.groupby(["site", "measure"]).size()
    assert per.loc[("lm.layers.0", "tau_rank")] == 3 * 2 and per.loc[("lm.layers.0", "similarity")] == 3
    x = cache.tokens("lm.layers.1")[2]
    row = table[(table.site == "lm.layers.1") & (table["clip"] == 2) & (table.measure == "tau_rank") & (table.tau == 0.99)]
    assert row.value.item() == probes.tau_effective_rank(x, 0.99)
    assert "tau_rank_window" not in set(table.measure)  # only with a window
    windowed = probes.token_measures(cache, taus=(0.99,), window=4)
    row = windowed[(windowed.site == "lm.layers.1") & (windowed["clip"] == 2) & (windowed.measure == "tau_rank_window")]
    assert row.value.item() == probes.windowed_tau_rank(x, 4, 0.99) <= 4


def test_plots_draw_rank_lines_and_state_updates_from_the_tidy_tables():
    import matplotlib

    matplotlib.use("Agg")
    from probes import plots

    model = tiny_lm()
    frames = []
    for stage in ("stage1", "stage2"):
        _, cache = probes.run_with_cache(model, {"input_ids": _ids(2, 12)}, "lm.layers.1")
        frames.append(probes.token_measures(cache).assign(stage=stage, model="tiny"))
    ax = plots.plot_rank_by_stage(pd.concat(frames), site="lm.layers.1")
    assert len(ax.lines) >= 1 and ax.get_xlabel() == "stage"
    state = probes.state_update_distance(model, {"input_ids": _ids(2, 12)})
    ax = plots.plot_state_update(state, by="position")
    assert list(ax.lines[0].get_xdata()) == list(range(1, 12))
    with pytest.raises(KeyError, match="needs columns"):
        plots.plot_state_update(state, hue="model")


def test_sam_sites_carry_encoder_grid_connector_tokens_and_the_lm_audio_span_bit_for_bit():
    model, batch = tiny_sam_and_batch()
    with torch.no_grad():
        plain = model(batch)[1]
    out, cache = probes.run_with_cache(model, batch)
    assert torch.equal(out[1], plain)
    t, f = model.audio_tower.grid_shape(batch["fbank"].shape[1])
    n = model.num_audio_tokens()
    d = model.audio_tower.embed_dim
    assert cache["encoder.patches"].shape == cache["encoder.out"].shape == (2, t, f, d)
    assert cache["encoder.blocks.0"].shape == (2, 1 + t * f, d)  # CLS first
    assert [x.shape for x in cache.tokens("encoder.blocks.0")] == [(t * f, d)] * 2  # CLS dropped
    assert cache["connector.in"].shape == (2, t, f * d)  # concat layout, before the MLP
    assert cache.spans.tolist() == [[0, n]] * 2
    assert torch.equal(cache["lm.embed"][:, :n], cache["connector.out"])  # audio tokens come first
    assert all(torch.equal(a, c) for a, c in zip(cache.tokens("lm.embed"), cache["connector.out"]))
    assert [x.shape[0] for x in cache.tokens("lm.layers.1")] == [n, n]
    table = probes.token_measures(cache, ["encoder.out", "connector.out", "lm.layers.1"])
    assert set(table.part) == {"encoder", "connector", "lm"} and table.value.notna().all()


def test_run_with_cache_accepts_the_readmes_site_patterns():
    model, batch = tiny_sam_and_batch()
    _, cache = probes.run_with_cache(model, batch, ["connector.out", "lm.layers.*"])
    layers = [n for n in probes.site_names(model) if re.fullmatch(r"lm\.layers\.\d+", n)]
    assert len(layers) >= 2 and list(cache) == ["connector.out", *layers]
    _, single = probes.run_with_cache(model, batch, "lm.layers.*")
    assert list(single) == layers and torch.equal(single[layers[-1]], cache[layers[-1]])
    lm = tiny_lm()  # a pattern no stable name fits falls back to module paths
    _, paths = probes.run_with_cache(lm, {"input_ids": _ids()}, ["backbone.layers.*.mixer.in_proj"])
    assert list(paths) == [f"backbone.layers.{i}.mixer.in_proj" for i in range(2)]
    with pytest.raises(KeyError, match="'lm.nothing.\\*' matches no probe site"):
        probes.run_with_cache(model, batch, ["lm.nothing.*"])
