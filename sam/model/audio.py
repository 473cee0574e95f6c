"""Audio front end: decode any file to 16 kHz mono, Kaldi-compatible log-mel fbank, pad/trim, normalize.

`fbank` reproduces `torchaudio.compliance.kaldi.fbank` (torchaudio is not available for every torch
build) in vectorized torch: frames by `unfold`, one `rfft`, one mel matmul. `fbank_batch` runs many
clips through a single FFT call and equals `fbank` clip by clip. Tests check it against
`kaldi-native-fbank` and transformers' `ASTFeatureExtractor`.

This module must never silently accept unreadable audio: every decoding problem raises `AudioError`
naming the file and the reason. It also never scales waveforms to int16 range (EAT and AST feed
float samples in [-1, 1] to Kaldi fbank, and their normalization statistics assume that).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import lru_cache
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

if TYPE_CHECKING:
    from sam.config import AudioConfig

# Kaldi's floor for log energies: float32 machine epsilon.
_LOG_FLOOR = float(torch.finfo(torch.float32).eps)


# Two MPEG-1 Layer III frames of samples: how far libsndfile's declared MP3 length may overshoot.
_MP3_SLACK = 2 * 1152


class AudioError(ValueError):
    """Audio could not be used; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------
# Decoding


def _name(src: str | Path | bytes | bytearray) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray)) else str(src)


def _wav_truncation(head: bytes, total: int) -> str | None:
    """Reason string if a RIFF/WAVE header declares more data than the file holds (libsndfile reads such files silently short)."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "little" if head[:4] == b"RIFF" else "big"
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4 : pos + 8], order)
        if head[pos : pos + 4] == b"data":
            available = total - (pos + 8)
            # 0 and 0xFFFFFFFF mark streamed files whose writer never filled in the size.
            if size not in (0, 0xFFFFFFFF) and size > available:
                return f"truncated (data chunk declares {size} bytes, file holds {available})"
            return None
        pos += 8 + size + (size & 1)
    return None


def load_audio(path_or_bytes: str | Path | bytes | bytearray, sample_rate: int = 16000, max_samples: int | None = None) -> np.ndarray:
    """Decode wav/flac/ogg/mp3 (anything libsndfile reads) to float32 mono at `sample_rate`.

    Channels are averaged; other rates are resampled with a polyphase filter. Silence is valid.
    Missing, empty, corrupt, truncated, non-finite, zero-length or unsupported input raises AudioError.
    With `max_samples`, only the start of the file is decoded (plus a margin, so the resampler's
    edge does not reach the kept part) and the result is exactly the first `max_samples` samples
    of the full decode: a long file costs memory for what a model reads, not for its length.
    """
    name = _name(path_or_bytes)
    if isinstance(path_or_bytes, (bytes, bytearray)):
        if len(path_or_bytes) == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        source: io.BytesIO | str = io.BytesIO(bytes(path_or_bytes))
    else:
        path = Path(path_or_bytes)
        if not path.exists():
            raise AudioError(f"{name}: file does not exist")
        if not path.is_file():
            raise AudioError(f"{name}: not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        source = str(path)
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        total = path.stat().st_size
    if isinstance(source, io.BytesIO):
        head, total = bytes(path_or_bytes[: 1 << 16]), len(path_or_bytes)
    reason = _wav_truncation(head, total)
    if reason:
        raise AudioError(f"{name}: {reason}")
    try:
        with sf.SoundFile(source) as f:
            declared = f.frames
            # libsndfile estimates an MP3's frame count (from the bitrate or a Xing/LAME tag) and
            # misses encoder padding by up to a couple of MPEG frames: a shortfall that small is not
            # truncation. A cut file falls short by far more.
            slack = _MP3_SLACK if f.format == "MP3" else 0
            sr = f.samplerate
            want = -1 if max_samples is None else math.ceil((max_samples + sample_rate) * sr / sample_rate)  # +1 s margin
            data = f.read(frames=want, dtype="float32", always_2d=True)
            if 0 < want <= data.shape[0]:
                declared = min(declared, want)  # the rest of the file is not read, so not checked
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{name}: unsupported or corrupt audio ({e})") from None
    if declared > 0 and data.shape[0] < declared - slack:
        raise AudioError(f"{name}: truncated ({data.shape[0]} of {declared} declared frames decoded)")
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no samples (zero-length or unreadable audio)")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        g = gcd(int(sr), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, sr // g)
    if max_samples is not None:
        wave = wave[:max_samples]
    return np.ascontiguousarray(wave, dtype=np.float32)


def samples_for_frames(frames: int, sample_rate: int = 16000) -> int:
    """Samples whose fbank has exactly `frames` frames: what a model cut to that many frames reads."""
    win, hop, _ = _frame_geometry(sample_rate)
    return (frames - 1) * hop + win


# --------------------------------------------------------------------------------------------
# Kaldi fbank


def _mel(f: torch.Tensor | float) -> torch.Tensor | float:
    return 1127.0 * (torch.log1p(f / 700.0) if isinstance(f, torch.Tensor) else math.log1p(f / 700.0))


@lru_cache(maxsize=16)
def mel_banks(num_mel_bins: int, n_fft: int, sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters [n_fft // 2 + 1, num_mel_bins] (the Nyquist row is zero, as in Kaldi)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range low_freq={low_freq} high_freq={high_freq} invalid for sample_rate={sample_rate}")
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    b = torch.arange(num_mel_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    fft_mel = _mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft)).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.cat([banks, torch.zeros(num_mel_bins, 1, dtype=torch.float64)], dim=1)
    return banks.T.contiguous().float()


@lru_cache(maxsize=8)
def _window(window_type: str, length: int) -> torch.Tensor:
    if window_type == "povey":
        return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85).float()
    if window_type == "hanning":
        return torch.hann_window(length, periodic=False, dtype=torch.float64).float()
    if window_type == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64).float()
    if window_type == "rectangular":
        return torch.ones(length)
    raise ValueError(f"window_type {window_type!r} unknown; choose povey, hanning, hamming or rectangular")


def _frame_geometry(sample_rate: int) -> tuple[int, int, int]:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 400:
        raise ValueError(f"sample_rate: expected a whole number of Hz >= 400 (a 25 ms window of >= 10 samples), got {sample_rate!r}")
    win = int(sample_rate * 0.025)
    hop = int(sample_rate * 0.010)
    n_fft = 1 << (win - 1).bit_length()  # Kaldi rounds the window up to a power of two
    return win, hop, n_fft


def _num_frames(n_samples: int, win: int, hop: int) -> int:
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


def _frames_to_fbank(frames: torch.Tensor, sample_rate: int, num_mel_bins: int, window_type: str) -> torch.Tensor:
    """[N, win] raw frames -> [N, mel] log-mel energies (the per-frame part of Kaldi fbank)."""
    win, _, n_fft = _frame_geometry(sample_rate)
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # Kaldi replicates the first sample
    frames = (frames - 0.97 * prev) * _window(window_type, win)
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)
    mel = power @ mel_banks(num_mel_bins, n_fft, sample_rate)
    return mel.clamp_min(_LOG_FLOOR).log()


def _as_tensor(wave: np.ndarray | torch.Tensor, what: str = "wave") -> torch.Tensor:
    raw = torch.as_tensor(wave)
    if not raw.is_floating_point():
        # Integer PCM (int16 from sf.read(dtype="int16"), say) would enter fbank 32768 times too
        # loud: its log-mel shifts by a constant and the model's normalization no longer fits.
        raise ValueError(f"{what}: {raw.dtype} samples; pass float samples in [-1, 1] (int16 / 32768)")
    t = raw.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: holds NaN or infinite samples")
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"{what}: expected a mono waveform of shape [samples], got {tuple(t.shape)}")
    return t


def fbank(wave: np.ndarray | torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, window_type: str = "povey") -> torch.Tensor:
    """Kaldi log-mel fbank [frames, num_mel_bins] with torchaudio.compliance.kaldi.fbank's defaults.

    25 ms window, 10 ms hop, snip_edges, remove DC, preemphasis 0.97, window rounded to a power of
    two, power spectrum, no dither, no energy. EAT and AST use ``window_type="hanning"``.
    """
    t = _as_tensor(wave)
    win, hop, _ = _frame_geometry(sample_rate)
    if _num_frames(t.numel(), win, hop) == 0:
        return torch.empty(0, num_mel_bins)
    return _frames_to_fbank(t.unfold(0, win, hop), sample_rate, num_mel_bins, window_type)


def fbank_batch(
    waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int = 16000, num_mel_bins: int = 128, window_type: str = "povey"
) -> list[torch.Tensor]:
    """`fbank` of many clips (any lengths) through one FFT call; element i equals `fbank(waves[i])`."""
    win, hop, _ = _frame_geometry(sample_rate)
    tensors = [_as_tensor(w, f"waves[{i}]") for i, w in enumerate(waves)]
    counts = [_num_frames(t.numel(), win, hop) for t in tensors]
    framed = [t.unfold(0, win, hop) for t, n in zip(tensors, counts) if n > 0]
    if not framed:
        return [torch.empty(0, num_mel_bins) for _ in tensors]
    out = _frames_to_fbank(torch.cat(framed), sample_rate, num_mel_bins, window_type)
    return list(out.split(counts))


# --------------------------------------------------------------------------------------------
# Fixed-size, normalized features


def pad_or_trim(fb: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad at the end or cut to `target_frames` rows (EAT/AST pad raw log-mel with 0 before normalizing)."""
    n = fb.shape[-2]
    if n >= target_frames:
        return fb[..., :target_frames, :]
    pad = fb.new_zeros(*fb.shape[:-2], target_frames - n, fb.shape[-1])
    return torch.cat([fb, pad], dim=-2)


def normalize(fb: torch.Tensor, mean: float = -4.268, std: float = 4.569) -> torch.Tensor:
    """(x - mean) / (2 * std): AST/EAT's AudioSet normalization (the defaults are AudioSet's stats)."""
    return (fb - mean) / (2.0 * std)


def wave_to_features(wave: np.ndarray | torch.Tensor, audio_cfg: AudioConfig) -> torch.Tensor:
    """Waveform at audio_cfg.sample_rate -> normalized fbank [target_frames, num_mel_bins]."""
    wave = wave[: samples_for_frames(audio_cfg.target_frames, audio_cfg.sample_rate)]  # frames past the cut are never used
    fb = fbank(wave, audio_cfg.sample_rate, audio_cfg.num_mel_bins, audio_cfg.window_type)
    return normalize(pad_or_trim(fb, audio_cfg.target_frames), audio_cfg.norm_mean, audio_cfg.norm_std)


def waves_to_features(waves: Sequence[np.ndarray | torch.Tensor], audio_cfg: AudioConfig) -> torch.Tensor:
    """Batched `wave_to_features`: [B, target_frames, num_mel_bins]."""
    keep = samples_for_frames(audio_cfg.target_frames, audio_cfg.sample_rate)
    fbs = fbank_batch([w[:keep] for w in waves], audio_cfg.sample_rate, audio_cfg.num_mel_bins, audio_cfg.window_type)
    if not fbs:
        return torch.empty(0, audio_cfg.target_frames, audio_cfg.num_mel_bins)
    stacked = torch.stack([pad_or_trim(f, audio_cfg.target_frames) for f in fbs])
    return normalize(stacked, audio_cfg.norm_mean, audio_cfg.norm_std)
