"""Configuration: one dataclass per part of SAM, named presets, YAML load/save, dotted overrides.

Every other module takes its settings from these dataclasses and nothing else, so an experiment is
fully described by one `SAMConfig` + one `TrainConfig` (and its hash names the run in `runs/`).
This module imports no torch: it is the contract between parts and must stay cheap to import.

Overrides use dotted keys, e.g. ``lm.d_model=256 train.stages.1.lr=3e-4 encoder.size=small``;
unknown keys and values of the wrong type raise `ConfigError` naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what was expected."""


# --------------------------------------------------------------------------------------------
# Parts of the model


@dataclass
class AudioConfig:
    """Front end: waveform -> Kaldi fbank -> normalized [frames, mel] (EAT/AST convention)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    clip_seconds: float = 10.0
    # Frames per clip after padding/trimming; EAT/AST use 1024 frames for a 10 s clip.
    target_frames: int = 1024
    # AudioSet statistics used by AST and EAT: (x - mean) / (2 * std).
    norm_mean: float = -4.268
    norm_std: float = 4.569
    # Kaldi fbank window; EAT and AST were trained on "hanning" (torchaudio's default is "povey").
    window_type: str = "hanning"


@dataclass
class EncoderConfig:
    """EAT-style ViT over 16x16 fbank patches. `size` picks a shape; explicit fields override it."""

    kind: str = "eat"  # "eat" (our ViT, loads EAT checkpoints) or "ast" (transformers.ASTModel)
    size: str = "base"  # tiny | small | base
    embed_dim: int = 0  # 0 -> from size
    depth: int = 0
    num_heads: int = 0
    mlp_ratio: float = 4.0
    patch_size: int = 16
    pos_embed: str = "fixed"  # fixed (2-D sin-cos) | learned
    # Pre-norm blocks train best from scratch; released EAT checkpoints are post-norm (data2vec 2.0).
    norm_first: bool = True
    dropout: float = 0.0
    checkpoint: str = ""  # local path to an EAT / AST checkpoint ("" = random init)


@dataclass
class ConnectorConfig:
    """How the encoder's [T, F, D] grid becomes LM tokens (the paper's token-layout ablation)."""

    layout: str = "concat"  # concat | time_major | freq_major | pool
    hidden_dim: int = 0  # MLP hidden width; 0 -> LM d_model
    pool_time: int = 1  # for layout=pool: average this many time steps into one token
    separator: str = "&&"  # text whose LM embedding separates time steps / frequency bands
    # 0: audio tokens are the MLP's output as is. > 0: each token is RMS-normalized and scaled by a learned
    # gain that starts at token_norm / sqrt(lm_dim), so every audio token enters the LM with L2 norm
    # token_norm (set it near the LM's text-embedding norm; the MLP alone gives tokens ~10x larger).
    token_norm: float = 0.0


@dataclass
class MambaConfig:
    """Mamba-2 LM shape, field names as in mamba_ssm's MambaConfig + its Mamba2 layer defaults."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 16


@dataclass
class LoraConfig:
    """LoRA on every Mamba-2 block's in_proj and out_proj (peft). rank 0 = no LoRA."""

    rank: int = 8
    alpha: float = 0.0  # 0 -> 2 * rank (the paper's choice)
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["in_proj", "out_proj"])


@dataclass
class SAMConfig:
    """The whole model: audio_tower + connector + language_model."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: MambaConfig = field(default_factory=MambaConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    lm_checkpoint: str = ""  # local state-spaces/mamba2 or HF Mamba2 dir ("" = random init)
    tokenizer: str = ""  # local HF tokenizer dir ("" = corpus-trained BPE from the data config)


# --------------------------------------------------------------------------------------------
# Data and training


@dataclass
class DataConfig:
    """Where the corpus lives and how scenes are composed from it."""

    root: str = "data"  # corpus + caches (relative to the working directory unless absolute)
    source: str = "debian"  # debian (embedded default) | folder (root/audio + root/labels.csv) | openaqa (JSON below)
    scene_seconds: float = 10.0
    max_events: int = 3
    background: bool = True
    n_train: int = 2000  # scenes per split
    n_valid: int = 200
    n_test: int = 300
    seed: int = 0
    bpe_vocab_size: int = 2048
    num_workers: int = 0
    # source=openaqa: examples read from instruction JSON in LTU/OpenAQA's format (sam.data.readers.read_openaqa)
    # instead of composed scenes; the scene settings and n_* above then do not apply.
    json_train: str = ""  # the train and valid splits: valid_permille of the audio files are held out for valid
    json_test: str = ""  # the test split (optional: without it the source has no test split)
    audio_dir: str = ""  # where the JSON's audio files are, looked up by file name (LTU's paths are absolute)
    valid_permille: int = 20


@dataclass
class StageConfig:
    """One curriculum stage: what data, what trains, how long and how fast."""

    name: str = "stage1"
    tasks: list[str] = field(default_factory=lambda: ["classification"])  # example tasks, or [text] alone (LM pretraining)
    trainable: list[str] = field(default_factory=lambda: ["connector"])  # encoder|connector|lora|lm|head (LM output)|classifier (stage 0)
    lr: float = 1e-3
    steps: int = 100
    warmup_steps: int = 10
    batch_size: int = 8
    grad_accum: int = 1


@dataclass
class TrainConfig:
    """Optimizer and loop settings shared by all stages, plus the stage list."""

    stages: list[StageConfig] = field(default_factory=list)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only at the end of each stage
    log_every: int = 10
    eval_batch_size: int = 16
    max_new_tokens: int = 32
    # Replay each micro-batch's forward + backward as a CUDA graph (sam.train.CudaGraphs): speed only,
    # CUDA only (ignored on CPU and under torchrun), one process, LM stages; never part of a config hash.
    cuda_graphs: bool = False
    # torch.compile each encoder block, Mamba-2 block and connector (sam.train.compile_blocks): speed
    # only, one CUDA process (refused on CPU and under torchrun, sam.train.check_compile); never part
    # of a config hash.
    compile: bool = False
    # Under torchrun, shard the trained module with FSDP2 (`fully_shard` per encoder block, per Mamba-2
    # block, then the root; sam.train.fsdp_shard) instead of replicating it with DDP: parameters,
    # gradients and AdamW states live 1/world_size on each process. Same results as one process;
    # ignored in one process; never part of a config hash.
    fsdp: bool = False
    # SSD chunk length of every Mamba-2 mixer while training (sam.mamba2.set_ssd_chunk_size): 0 = the
    # model's own (lm.chunk_size on CUDA); else a power of two >= 16. The scan is exact for any chunk
    # length, so this is speed only (sequences much shorter than lm.chunk_size waste most of each
    # chunk); never part of a config hash.
    ssd_chunk_size: int = 0


@dataclass
class EvalConfig:
    """How generated text is scored (sam.evaluate); batch size and length live in TrainConfig."""

    text_encoder: str = "minilm"  # minilm (bundled all-MiniLM-L6-v2, LTU-style) | clap (SAM's protocol)
    text_encoder_path: str = ""  # local CLAP checkpoint dir, required for text_encoder=clap
    corenlp_dir: str = ""  # dir with stanford-corenlp-3.6.0.jar + -models.jar; "" = SPICE not computed
    f1_top_k: int = 1  # micro-F1 predicts each clip's top-k classes (LTU's DCASE protocol: 1)


@dataclass
class ExperimentConfig:
    """Everything one run needs. Its hash (`config_hash`) names the run directory."""

    preset: str = "cpu"
    model: SAMConfig = field(default_factory=SAMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Presets


def _curriculum(
    scale: float,
    bs: int,
    reasoning: bool = True,
    encoder_pretraining: bool = True,
    lm_steps: int = 0,
    lm_bs: int = 0,
    steps: dict[str, int] | None = None,
    lr: dict[str, float] | None = None,
) -> list[StageConfig]:
    """The four-stage LTU/SAM curriculum (+ optional stage 5); `scale` multiplies step counts.

    `steps` and `lr` replace the scaled step count and the learning rate of the stages they name
    (warmup stays 10% of the steps).

    With `lm_steps`, a "stage_lm" first trains the whole LM for that many steps (batch `lm_bs`, else
    `bs`) as a causal LM on the training split's prompt + answer text, standing in for a pretrained
    Mamba-2 checkpoint. With `encoder_pretraining`, a stage 0 then trains the encoder alone with a
    linear multi-label head on the corpus classes (standing in for EAT's AudioSet finetuning when no
    checkpoint is given).
    """

    def s(n: int) -> int:
        return max(2, int(round(n * scale)))

    stages = [StageConfig("stage_lm", ["text"], ["lm"], 1e-3, lm_steps, max(1, lm_steps // 10), lm_bs or bs)] if lm_steps else []
    if encoder_pretraining:
        stages.append(StageConfig("stage0", ["classification"], ["encoder", "classifier"], 5e-4, s(300), s(30), bs))
    stages += [
        StageConfig("stage1", ["classification"], ["connector"], 1e-3, s(300), s(30), bs),
        StageConfig("stage2", ["classification"], ["encoder", "connector", "lora"], 1e-4, s(300), s(30), bs),
        StageConfig("stage3", ["classification", "closed"], ["encoder", "connector", "lora"], 1e-4, s(300), s(30), bs),
        StageConfig(
            "stage4", ["classification", "closed", "open", "caption"], ["encoder", "connector", "lora"], 1e-4, s(400), s(40), bs
        ),
    ]
    if reasoning:
        stages.append(StageConfig("stage5", ["reasoning", "closed", "caption"], ["encoder", "connector", "lora"], 1e-4, s(300), s(30), bs))
    for stage in stages:
        if stage.name in (steps or {}):
            stage.steps = steps[stage.name]
            stage.warmup_steps = max(1, stage.steps // 10)
        stage.lr = (lr or {}).get(stage.name, stage.lr)
    return stages


def _scratch_curriculum(bs: int, lm_steps: int, lm_bs: int, steps: dict[str, int]) -> list[StageConfig]:
    """The cpu/gpu curriculum, whose LM starts from scratch (stage_lm) instead of a pretrained checkpoint.

    Every stage's step count is given. Stage 1 trains the LM with the connector, on every instruction
    type (the reasons are measured; see the cpu preset), and the later stages use a higher learning rate.
    """
    stages = _curriculum(1.0, bs, lm_steps=lm_steps, lm_bs=lm_bs, steps=steps,
                         lr={"stage0": 1e-3, "stage2": 5e-4, "stage3": 5e-4, "stage4": 5e-4, "stage5": 5e-4})
    stage1 = next(s for s in stages if s.name == "stage1")
    stage1.trainable, stage1.tasks = ["connector", "lm"], ["classification", "closed", "open", "caption"]
    return stages


# LM sizes that stand in for 130M / 780M / 2.7B in the cpu and gpu presets.
LM_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "smoke": {"small": dict(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=32)},
    "cpu": {
        "small": dict(d_model=128, n_layer=2, d_state=32, headdim=32, chunk_size=64),
        "medium": dict(d_model=192, n_layer=4, d_state=32, headdim=32, chunk_size=64),
        "large": dict(d_model=256, n_layer=6, d_state=32, headdim=32, chunk_size=64),
    },
    "gpu": {
        "small": dict(d_model=384, n_layer=8, d_state=64, headdim=64, chunk_size=128),
        "medium": dict(d_model=768, n_layer=12, d_state=128, headdim=64, chunk_size=256),
        "large": dict(d_model=1024, n_layer=24, d_state=128, headdim=64, chunk_size=256),
    },
}
PAPER_LM_NAMES = {"small": "130m", "medium": "780m", "large": "2.7b"}


def preset(name: str, lm_size: str = "small") -> ExperimentConfig:
    """Named preset: smoke (seconds, tests) | cpu (2-core default) | gpu (one H100) | paper."""
    if name == "smoke":
        cfg = ExperimentConfig(preset="smoke")
        cfg.model.audio = AudioConfig(clip_seconds=5.0, target_frames=512)
        cfg.model.encoder = EncoderConfig(size="tiny", depth=2, embed_dim=64, num_heads=2)
        cfg.model.lm = MambaConfig(**LM_SIZES["smoke"]["small"], vocab_size=512)
        cfg.model.lora = LoraConfig(rank=8)  # the paper's low rank: the LoRA-rank table's rank-8 arm reuses this run
        cfg.data = DataConfig(scene_seconds=5.0, n_train=64, n_valid=16, n_test=16, bpe_vocab_size=512)
        cfg.train = TrainConfig(stages=_curriculum(0.02, 4, lm_steps=20), log_every=2, eval_batch_size=8, max_new_tokens=12)
        return cfg
    if name == "cpu":
        cfg = ExperimentConfig(preset="cpu")
        cfg.model.audio = AudioConfig(clip_seconds=5.0, target_frames=512)
        cfg.model.encoder = EncoderConfig(size="small")
        cfg.model.lm = MambaConfig(**LM_SIZES["cpu"][lm_size], vocab_size=2048)
        cfg.model.lora = LoraConfig(rank=8)
        # 512 test scenes: the 95% bootstrap CI of mAP with random scores is about +-0.8 pp there
        cfg.data = DataConfig(scene_seconds=5.0, n_train=1000, n_valid=64, n_test=512, bpe_vocab_size=2048)
        # Measured choices (README, Results): the encoder pretrains longest (one run per seed, shared by
        # every LM size and variant through the run cache; 400 -> 800 steps raised its linear-probe test
        # mAP from 23% to 28%). A tiny LM trained on text for a minute cannot be steered by the connector
        # alone: after 400 connector-only steps the classification loss with a clip's own audio was
        # 2.66 vs 2.68 with another clip's, while training connector + LM gave 1.70 vs 2.17. So stage 1
        # also trains the LM here (a pretrained LM's job in the paper), on every instruction type: trained
        # on classification alone, the LM forgot the other answer styles and LoRA could not bring them
        # back in the later stages (after stage 4 it answered every instruction with a caption).
        stages = _scratch_curriculum(16, 150, 32, {"stage0": 600, "stage1": 300, "stage2": 120, "stage3": 80, "stage4": 160, "stage5": 60})
        cfg.train = TrainConfig(stages=stages, max_new_tokens=24)
        return cfg
    if name == "gpu":
        cfg = ExperimentConfig(preset="gpu")
        cfg.model.encoder = EncoderConfig(size="base")
        cfg.model.lm = MambaConfig(**LM_SIZES["gpu"][lm_size], vocab_size=4096)
        cfg.model.lora = LoraConfig(rank=8)
        # Sized so that one seed of the three LM sizes trains within an hour on an H100 (about
        # 25 minutes for fig2_rank from a cold cache; eager bf16, 10-s scenes, features computed by
        # loader workers and cached on disk). The curriculum has the cpu preset's shape, for the same
        # measured reasons: the LM starts from scratch (see _scratch_curriculum).
        cfg.data = DataConfig(n_train=4000, n_valid=200, n_test=2000, bpe_vocab_size=4096, num_workers=6)
        stages = _scratch_curriculum(32, 600, 64, {"stage0": 600, "stage1": 300, "stage2": 150, "stage3": 100, "stage4": 200, "stage5": 100})
        cfg.train = TrainConfig(stages=stages, max_new_tokens=32, checkpoint_every=100)
        return cfg
    if name == "paper":
        cfg = ExperimentConfig(preset="paper")
        cfg.model.encoder = EncoderConfig(size="base", norm_first=False)  # EAT's post-norm layout
        cfg.model.lm = MambaConfig()  # replaced by the checkpoint's own config.json on load
        cfg.model.lora = LoraConfig(rank=256)
        cfg.eval = EvalConfig(text_encoder="clap")  # text_encoder_path must name a local CLAP checkpoint
        cfg.train = TrainConfig(stages=_curriculum(100.0, 32, reasoning=False, encoder_pretraining=False))
        return cfg
    raise ConfigError(f"unknown preset {name!r}; choose one of smoke, cpu, gpu, paper")


# --------------------------------------------------------------------------------------------
# Dict / YAML conversion with type checking


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (JSON/YAML-ready)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to annotation `tp`, raising ConfigError naming `key` on mismatch."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for sub in typing.get_args(tp):
            try:
                return _coerce(value, sub, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.lstrip("-").isdigit()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s}; valid keys under '{prefix or '.'}': {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with ``dotted.key=value`` overrides applied (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.split(".")
        obj: Any = cfg
        for i, part in enumerate(parts[:-1]):
            obj = _child(obj, part, ".".join(parts[: i + 1]))
        last = parts[-1]
        if isinstance(obj, list):
            idx = _index(obj, last, key)
            obj[idx] = _coerce(value, type(obj[idx]), key) if dataclasses.is_dataclass(obj[idx]) else value
        elif dataclasses.is_dataclass(obj):
            hints = typing.get_type_hints(type(obj))
            if last not in hints:
                raise ConfigError(f"unknown config key {key}; valid keys: {', '.join(sorted(hints))}")
            setattr(obj, last, _coerce(value, hints[last], key))
        else:
            raise ConfigError(f"{key}: cannot set a field inside {type(obj).__name__}")
    return cfg


def _index(seq: list, part: str, key: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(seq) <= int(part) < len(seq):
        raise ConfigError(f"{key}: {part!r} is not an index into a list of {len(seq)}")
    return int(part)


def _child(obj: Any, part: str, key: str) -> Any:
    if isinstance(obj, list):
        return obj[_index(obj, part, key)]
    if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
        return getattr(obj, part)
    raise ConfigError(f"unknown config key {key}")


def load_yaml(path: str | Path, cls: type = ExperimentConfig) -> Any:
    """Load a YAML file into `cls`. A top-level ``preset: NAME`` starts from that preset."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if cls is ExperimentConfig and "preset" in data:
        base = to_dict(preset(str(data["preset"]), str(data.pop("lm_size", "small"))))
        data = _deep_merge(base, data)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Settings that change only how fast a run trains, not what it computes: left out of every hash, so
# turning them on reuses (and names) the same cached runs.
SPEED_ONLY = {"train": ("cuda_graphs", "compile", "fsdp", "ssd_chunk_size")}


# Settings added after runs had been cached under hashes that did not include them: left out of
# every hash while they hold these defaults, so those runs keep their names.
HASH_OMIT_AT_DEFAULT = {"data": {"json_train": "", "json_test": "", "audio_dir": "", "valid_permille": 20},
                        "model.connector": {"token_norm": 0.0}}


def hash_tree(cfg: Any) -> Any:
    """`to_dict(cfg)` less the `HASH_OMIT_AT_DEFAULT` settings that hold their default (for dataclass configs)."""
    tree = to_dict(cfg)
    if dataclasses.is_dataclass(cfg) and isinstance(tree, dict):
        for section, defaults in HASH_OMIT_AT_DEFAULT.items():
            *parents, leaf = section.split(".")
            node = tree
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(leaf), dict):
                node[leaf] = {k: v for k, v in node[leaf].items() if not (k in defaults and v == defaults[k])}
    return tree


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable short hash of a config tree: names cached runs. `SPEED_ONLY` settings are left out."""
    tree = hash_tree(cfg)
    if isinstance(tree, dict):
        for section, keys in SPEED_ONLY.items():
            if isinstance(tree.get(section), dict):
                tree = {**tree, section: {k: v for k, v in tree[section].items() if k not in keys}}
    blob = json.dumps(tree, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
