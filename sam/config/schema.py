"""Configuration schema: one dataclass per part of SAM, and the kinds of curriculum stage.

Every other module takes its settings from these dataclasses and nothing else, so an experiment is
fully described by one `SAMConfig` + one `TrainConfig` (and its hash names the run in `runs/`).
This module imports no torch: it is the contract between parts and must stay cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # SpecAugment in encoder pretraining (stage 0) only, as AST and EAT finetune: each training clip gets
    # one band of up to this many mel bins and one span of up to this many frames set to 0 (the
    # normalized mean). 0 = off. The LM stages see unmasked audio.
    pretrain_freq_mask: int = 0
    pretrain_time_mask: int = 0


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
# Kinds of stage

TEXT_TASK = "text"  # the LM-pretraining stage's only task: the training split's text, without audio


def is_encoder_stage(stage: StageConfig) -> bool:
    """A stage that trains the multi-label classifier trains the audio tower alone (stage 0)."""
    return "classifier" in stage.trainable


def is_lm_stage(stage: StageConfig) -> bool:
    """A stage whose task is text trains the language model alone on text (before any audio stage)."""
    return TEXT_TASK in stage.tasks
