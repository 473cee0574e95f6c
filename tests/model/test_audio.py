"""Audio front end: decoding of every format/rate/channel layout, clear errors, Kaldi fbank equality."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sam.config import AudioConfig
from sam.model.audio import AudioError, fbank, fbank_batch, load_audio, normalize, pad_or_trim, wave_to_features, waves_to_features

SONIC_PI = sorted(glob.glob("/usr/share/sonic-pi/samples/*.flac"))
ASTERISK = sorted(glob.glob("/usr/share/asterisk/sounds/en*/*.wav"))
pytestmark = pytest.mark.skipif(
    not SONIC_PI or not ASTERISK, reason="Debian packages sonic-pi-samples / asterisk-core-sounds-en-wav not installed"
)


@pytest.fixture(scope="module")
def real_wave() -> np.ndarray:
    # A few seconds of a real instrument recording (16 kHz after resampling).
    return load_audio(next(p for p in SONIC_PI if p.endswith("ambi_choir.flac")))


@pytest.fixture(scope="module")
def speech_8k() -> tuple[np.ndarray, int]:
    data, sr = sf.read(ASTERISK[0], dtype="float32")
    return data, sr


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_load_audio_decodes_each_format_to_16k_mono(tmp_path: Path, speech_8k, fmt: str, ext: str) -> None:
    data, sr = speech_8k
    path = tmp_path / f"clip.{ext}"
    sf.write(path, data, sr, format=fmt)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 2 * len(data)) <= 2 * 1152  # mp3 may add up to a frame of priming samples
    if fmt in ("WAV", "FLAC"):  # lossless: must equal a direct resample of the source
        direct = load_audio(ASTERISK[0])
        np.testing.assert_allclose(wave, direct, atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_load_audio_resamples_any_rate_to_the_same_signal(tmp_path: Path, real_wave: np.ndarray, rate: int) -> None:
    from scipy.signal import resample_poly

    src = resample_poly(real_wave, rate, 16000).astype(np.float32)
    path = tmp_path / f"r{rate}.flac"
    sf.write(path, src, rate, subtype="PCM_24")
    back = load_audio(path)
    assert abs(len(back) - len(real_wave)) <= 1
    n = min(len(back), len(real_wave))
    if rate > 16000:  # no information lost below 8 kHz: round trip is close away from the edges
        err = np.abs(back[200 : n - 200] - real_wave[200 : n - 200]).max()
        assert err < 0.02 * np.abs(real_wave).max()


def test_load_audio_downmixes_stereo_and_reads_bytes(tmp_path: Path, real_wave: np.ndarray) -> None:
    stereo = np.stack([real_wave, 0.5 * real_wave], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    wave = load_audio(path)
    np.testing.assert_allclose(wave, 0.75 * real_wave, atol=1e-6)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), wave)


def test_load_audio_accepts_silence(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    assert not load_audio(path).any()


def _bad_files(tmp_path: Path, real_wave: np.ndarray) -> dict[str, tuple[Path, str]]:
    out: dict[str, tuple[Path, str]] = {}
    out["missing"] = (tmp_path / "missing.wav", "does not exist")
    (tmp_path / "empty.wav").write_bytes(b"")
    out["empty"] = (tmp_path / "empty.wav", "empty file")
    for ext, fmt in [("wav", "WAV"), ("flac", "FLAC"), ("mp3", "MP3")]:
        full = tmp_path / f"full.{ext}"
        sf.write(full, real_wave, 16000, format=fmt)
        blob = full.read_bytes()
        (tmp_path / f"trunc.{ext}").write_bytes(blob[: len(blob) // 2])
        out[f"truncated_{ext}"] = (tmp_path / f"trunc.{ext}", "")
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    out["nan"] = (tmp_path / "nan.wav", "NaN")
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    out["zero_length"] = (tmp_path / "zero.wav", "no samples")
    (tmp_path / "text.wav").write_text("this is not audio at all " * 20)
    out["unsupported"] = (tmp_path / "text.wav", "unsupported")
    return out


def test_load_audio_raises_audio_error_naming_file_and_reason(tmp_path: Path, real_wave: np.ndarray) -> None:
    for case, (path, reason) in _bad_files(tmp_path, real_wave).items():
        with pytest.raises(AudioError) as info:
            load_audio(path)
        msg = str(info.value)
        assert str(path) in msg, case
        assert reason in msg, (case, msg)
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")


def test_fbank_equals_kaldi_native_fbank_at_80_bins(real_wave: np.ndarray) -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    for wave in (real_wave, load_audio(ASTERISK[1])):
        opts = knf.FbankOptions()
        opts.frame_opts.dither = 0.0
        opts.frame_opts.samp_freq = 16000
        opts.mel_opts.num_bins = 80
        ref_fb = knf.OnlineFbank(opts)
        ref_fb.accept_waveform(16000, wave.tolist())
        ref_fb.input_finished()
        ref = torch.tensor(np.stack([ref_fb.get_frame(i) for i in range(ref_fb.num_frames_ready)]))
        ours = fbank(wave, num_mel_bins=80)
        assert ours.shape == ref.shape
        assert (normalize(ours) - normalize(ref)).abs().max() < 1e-3


def test_fbank_equals_ast_feature_extractor_at_128_bins(real_wave: np.ndarray) -> None:
    from transformers import ASTFeatureExtractor

    fe = ASTFeatureExtractor()  # numpy path: torchaudio is not installed with this torch
    cfg = AudioConfig(norm_mean=fe.mean, norm_std=fe.std, target_frames=fe.max_length)
    for wave in (real_wave, load_audio(ASTERISK[2]), np.tile(real_wave, 8)):  # padded and trimmed cases
        ref = torch.tensor(fe(wave, sampling_rate=16000, return_tensors="np")["input_values"][0])
        ours = wave_to_features(wave, cfg)
        assert ours.shape == ref.shape == (1024, 128)
        assert (ours - ref).abs().max() < 1e-3


def test_fbank_batch_equals_per_clip(real_wave: np.ndarray) -> None:
    waves = [real_wave[:n] for n in (16000, 399, 400, 12345, len(real_wave))] + [load_audio(ASTERISK[3])]
    batch = fbank_batch(waves, window_type="hanning")
    for wave, fb in zip(waves, batch):
        single = fbank(wave, window_type="hanning")
        assert fb.shape == single.shape
        torch.testing.assert_close(fb, single, atol=1e-5, rtol=0)
    assert batch[1].shape == (0, 128) and batch[2].shape == (1, 128)  # snip_edges: 400 samples = one frame
    cfg = AudioConfig(target_frames=300)
    feats = waves_to_features(waves, cfg)
    assert feats.shape == (len(waves), 300, 128)
    torch.testing.assert_close(feats[0], wave_to_features(waves[0], cfg), atol=1e-5, rtol=0)


def test_pad_or_trim_pads_with_zeros_and_cuts() -> None:
    fb = torch.randn(10, 4)
    padded = pad_or_trim(fb, 16)
    assert padded.shape == (16, 4) and torch.equal(padded[:10], fb) and not padded[10:].any()
    assert torch.equal(pad_or_trim(fb, 3), fb[:3])
    assert pad_or_trim(torch.randn(2, 10, 4), 5).shape == (2, 5, 4)


MP3_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@pytest.mark.parametrize("name,seconds", [("espeak-sentence.mp3", 82368 / 22050), ("agent-newlocation.mp3", 3.204)])
def test_load_audio_accepts_real_mp3_whose_declared_length_is_an_estimate(name: str, seconds: float) -> None:
    # espeak-sentence.mp3 (sox of an espeak-ng sentence) declares 82755 frames and decodes 82368.
    info = sf.info(MP3_FIXTURES / name)
    wave = load_audio(MP3_FIXTURES / name)
    assert abs(len(wave) / 16000 - seconds) < 0.01 and info.frames >= len(wave) * info.samplerate / 16000 - 1
    assert 0.01 < float(np.sqrt(np.mean(wave**2))) < 0.5  # speech, not silence or noise blown up


def test_fbank_refuses_integer_pcm_nan_samples_and_impossible_rates(real_wave: np.ndarray) -> None:
    pcm = np.round(real_wave * 32767).astype(np.int16)
    with pytest.raises(ValueError, match="int16 samples; pass float samples"):
        fbank(pcm)
    with pytest.raises(ValueError, match=r"waves\[1\]: torch.int16"):
        fbank_batch([real_wave, pcm])
    nan = real_wave.copy()
    nan[100] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        fbank(nan)
    for rate in (0, -16000, 16000.5):
        with pytest.raises(ValueError, match="sample_rate"):
            fbank(real_wave, sample_rate=rate)
    assert torch.isfinite(fbank(pcm / 32768.0)).all()  # the conversion the message asks for works
