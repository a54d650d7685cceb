"""Machine-sound clips -> log-mel spectrograms, cached on disk once per configuration.

The log-mel follows the DCASE Task 2 baseline and AEGAN-AD, which both call
``librosa.feature.melspectrogram`` and then convert power to decibels; it is computed here with
``torch.stft`` and a Slaney-style mel filter bank so that librosa is not needed:

1. read the wav (soundfile), average the channels, resample to ``sample_rate`` when the file has
   another rate (``scipy.signal.resample_poly``);
2. power spectrogram |STFT|^2: periodic Hann window of ``n_fft`` samples, hop ``hop_length``,
   frames centred (the signal is zero-padded by n_fft / 2 on both sides, librosa's default);
3. mel power = M |STFT|^2 with M [n_mels, 1 + n_fft / 2] the Slaney mel filter bank (librosa's
   default: ``htk=False``, ``norm="slaney"``, triangles between ``fmin`` and ``fmax``);
4. dB = 10 log10(max(mel, 1e-10)), floored at (max over the clip - ``top_db``): librosa's
   ``power_to_db(ref=1.0, amin=1e-10, top_db=80)``;
5. the clip's frames are cut to ``frames`` (the first ones) or, when the clip is shorter, padded by
   wrapping around (the clip's first frames repeat), so every clip of a run has the same shape.

Features are stored as float16 dB in ``<cache_dir>/<name>-<key>.npy``, where the key hashes the
feature parameters and the file list (absolute path, size and modification time of every clip):
any change to either gives a new file. Files are written to a temporary name and renamed, so a
killed extraction never leaves a half file under the final name. Without a ``cache_dir`` the
features go to the user's cache (``default_cache_dir``), never into the dataset, which may be
read-only or shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clad.benchmarks.user_cache import user_cache_dir
from clad.errors import DatasetError
from clad.progress import progress

AMIN = 1e-10  # librosa power_to_db's floor on power before the log
CACHE_VERSION = 1  # bump when the computation changes, so stale caches are not reused
PROGRESS_MIN_CLIPS = 50


@dataclass(frozen=True)
class LogMelParams:
    """Everything that determines a clip's features (and so the cache key)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    top_db: float | None = 80.0
    frames: int = 313

    def __post_init__(self) -> None:
        nyquist = self.sample_rate / 2
        if self.n_fft < 2 or self.hop_length < 1 or self.n_mels < 1 or self.frames < 1:
            raise ValueError(f"invalid log-mel parameters: {self}")
        if not 0 <= self.fmin < (self.fmax or nyquist) <= nyquist:
            raise ValueError(
                f"need 0 <= fmin < fmax <= sample_rate / 2 = {nyquist}, got fmin={self.fmin}, "
                f"fmax={self.fmax}"
            )


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """A wav file as mono float32 [L] at ``sample_rate``.

    Raises:
        DatasetError: naming the file when it is missing, unreadable, empty or not audio.
    """
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [L, C]
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        raise DatasetError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise DatasetError(f"audio file {path} holds no samples")
    wave = data.mean(axis=1)  # [L]
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    if not np.isfinite(wave).all():
        raise DatasetError(f"audio file {path} contains NaN or infinite samples")
    return wave


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = f_sp * mel
    log = min_log_hz * np.exp(logstep * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, log, linear)


@lru_cache(maxsize=8)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> torch.Tensor:
    """Slaney-normalised triangular mel filters [n_mels, 1 + n_fft // 2] (librosa's default).

    Filter m rises linearly from mel point m to m + 1 and falls to m + 2 (n_mels + 2 points equally
    spaced in mel between fmin and fmax), scaled by 2 / (f_{m+2} - f_m) so each has unit area.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)  # [F]
    points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [M + 2]
    gaps = np.diff(points)  # [M + 1]
    ramps = points[:, None] - fft_freqs[None, :]  # [M + 2, F]
    lower = -ramps[:-2] / gaps[:-1, None]  # [M, F]
    upper = ramps[2:] / gaps[1:, None]  # [M, F]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (points[2:] - points[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(wave: np.ndarray, params: LogMelParams) -> np.ndarray:
    """Log-mel spectrogram in dB of a mono clip [L] -> float32 [n_mels, frames].

    See the module docstring for the steps; ``frames`` columns are kept (cut or wrapped).
    """
    signal = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    window = torch.hann_window(params.n_fft, periodic=True)
    if signal.numel() <= params.n_fft // 2:  # constant padding needs no minimum, but a frame does
        signal = torch.nn.functional.pad(signal, (0, params.n_fft // 2 + 1 - signal.numel()))
    spec = torch.stft(
        signal,
        params.n_fft,
        params.hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [F, T]
    power = spec.real.square() + spec.imag.square()  # [F, T]
    bank = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    mel = bank @ power  # [n_mels, T]
    db = 10.0 * torch.log10(mel.clamp_min(AMIN))
    if params.top_db is not None:
        db = torch.maximum(db, db.max() - params.top_db)
    return fit_frames(db.numpy(), params.frames)


def fit_frames(spec: np.ndarray, frames: int) -> np.ndarray:
    """[M, T] -> [M, frames]: the first ``frames`` columns, wrapping around when T < frames."""
    count = spec.shape[1]
    if count >= frames:
        return spec[:, :frames]
    return np.pad(spec, ((0, 0), (0, frames - count)), mode="wrap")


def default_cache_dir(root: Path) -> Path:
    """Where a dataset's features go when ``dataset.audio.cache_dir`` is null:
    ``<user_cache_dir>/audio_features/<root name>-<hash of the resolved root>``, one folder per
    dataset root (two roots never share one), outside the dataset."""
    resolved = Path(root).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return user_cache_dir() / "audio_features" / f"{resolved.name or 'root'}-{digest}"


def cache_key(paths: Sequence[Path], params: LogMelParams) -> str:
    """SHA-256 (hex) of the feature parameters and, per clip, its absolute path, size and mtime."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, **asdict(params)}, sort_keys=True).encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DatasetError(f"cannot read audio file {path}: {err}") from err
        digest.update(f"\n{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def extract_features(
    paths: Sequence[Path], params: LogMelParams, cache_dir: Path, name: str
) -> np.ndarray:
    """Log-mel dB features of ``paths``, from the cache when present, else computed and cached.

    Args:
        paths: the clips, in the order of the returned rows.
        params: feature parameters.
        cache_dir: folder of the cache files (created when missing).
        name: readable prefix of the cache file, e.g. ``"fan-train"``.

    Returns:
        float16 [N, n_mels, frames] in dB, memory-mapped read-only from the cache file.

    Raises:
        DatasetError: naming the file when a clip cannot be read, or the cache folder when it
            cannot be written (with the setting that moves it).
    """
    if len(paths) == 0:
        raise DatasetError(f"{name}: no audio clips to extract features from")
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{name}-{cache_key(paths, params)[:20]}.npy"
    shape = (len(paths), params.n_mels, params.frames)
    if target.is_file():
        try:
            cached = np.load(target, mmap_mode="r")
            if cached.shape == shape and cached.dtype == np.float16:
                return cached
        except (OSError, ValueError):
            pass  # unreadable cache file: compute it again
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise DatasetError(
            f"{cache_dir}: cannot write the audio feature cache there ({err.strerror or err}); "
            "set dataset.audio.cache_dir (or CLAD_CACHE_DIR) to a writable folder"
        ) from None
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)

        def one(path: Path) -> np.ndarray:
            return log_mel(read_wav(Path(path), params.sample_rate), params)

        # one clip is too small to split across torch threads (on a busy machine the threads'
        # synchronisation made a 10-s clip 20x slower); clips run in parallel instead
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                rows = pool.map(one, paths)
                bar = progress(
                    rows,
                    desc=f"log-mel {name}",
                    total=len(paths),
                    disable=len(paths) < PROGRESS_MIN_CLIPS,
                )
                for i, spec in enumerate(bar):
                    out[i] = spec
        finally:
            torch.set_num_threads(threads)
        out.flush()
        del out
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return np.load(target, mmap_mode="r")
