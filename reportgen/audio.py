"""Audio inputs: `.wav` files read with the standard library's `wave` module.

PCM samples of 8 bits (unsigned, offset 128), 16, 24 or 32 bits (signed, little-endian) are
scaled to [-1, 1) by 2**(bits - 1), the convention of torchaudio and soundfile, and stacked as
(channels, length) float32. A stereo file given to a one-channel model is mixed down to mono (the
mean of its channels), and the page says so; any other channel mismatch is refused. With
`--sample-rate` a file at another rate is refused (no resampling is done: a resampler chosen
here would change what the model hears); without it every file must share one rate, which the
report states.
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reportgen.errors import ReportError, one_line

WAV_SUFFIXES = frozenset({".wav", ".wave"})
_DTYPES = {1: np.uint8, 2: np.dtype("<i2"), 4: np.dtype("<i4")}


def read_wav(path: Path) -> tuple[torch.Tensor, int, int]:
    """(samples (channels, length) float32 in [-1, 1), sample rate, bits per sample)."""
    try:
        with wave.open(str(path), "rb") as source:
            channels, width, rate = source.getnchannels(), source.getsampwidth(), source.getframerate()
            frames = source.getnframes()
            raw = source.readframes(frames)
    except FileNotFoundError as exc:
        raise ReportError(f"input not found: {path}") from exc
    except (wave.Error, EOFError, OSError, RuntimeError, struct.error) as exc:
        raise ReportError(f"cannot read {path} as a PCM .wav file: {one_line(exc)}") from exc
    if width not in (1, 2, 3, 4):
        raise ReportError(f"{path}: {8 * width}-bit samples are not supported (8, 16, 24 or 32-bit PCM)")
    if frames == 0 or len(raw) < frames * channels * width:
        raise ReportError(f"{path}: the file holds {len(raw) // max(1, channels * width)} of its {frames} frames")
    raw = raw[: frames * channels * width]
    if width == 3:  # 24-bit: three little-endian bytes, sign-extended into int32
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
    else:
        values = np.frombuffer(raw, dtype=_DTYPES[width]).astype(np.int64)
        if width == 1:
            values = values - 128
    scaled = values.astype(np.float64) / float(1 << (8 * width - 1))
    samples = torch.from_numpy(scaled.reshape(frames, channels).T.astype(np.float32).copy())
    return samples, rate, 8 * width


def from_wav_files(paths: Sequence[Path], *, channels: int | None, sample_rate: int | None,
                   skippable: Sequence[bool] | None = None) -> tuple[list[Path], list[str], list[str], int]:
    """Check every file's header now (rate, channels), so a mismatch fails before any batch.
    Returns (kept paths, per-file notes, skipped "name (why)", the common rate)."""
    kept: list[Path] = []
    notes: list[str] = []
    skipped: list[str] = []
    rates: dict[int, str] = {}
    for position, path in enumerate(paths):
        try:
            with wave.open(str(path), "rb") as source:
                file_channels, rate, width = source.getnchannels(), source.getframerate(), source.getsampwidth()
        except (wave.Error, EOFError, OSError, RuntimeError, struct.error) as exc:
            if skippable and skippable[position]:
                skipped.append(f"{path.name} (cannot read it as a PCM .wav file: {one_line(exc)})")
                continue
            if isinstance(exc, FileNotFoundError):
                raise ReportError(f"input not found: {path}") from exc
            raise ReportError(f"cannot read {path} as a PCM .wav file: {one_line(exc) or type(exc).__name__}") from exc
        if sample_rate is not None and rate != sample_rate:
            raise ReportError(f"{path} is sampled at {rate} Hz, not the {sample_rate} Hz of --sample-rate; "
                              "resample it first (reportgen does not resample)")
        rates.setdefault(rate, path.name)
        if channels is not None and file_channels != channels and not (channels == 1 and file_channels > 1):
            raise ReportError(f"{path} has {file_channels} channel(s); the model takes {channels}")
        note = (f"{file_channels} channels mixed down to mono (their mean)"
                if channels == 1 and file_channels > 1 else "")
        notes.append(note)
        kept.append(path)
        del width
    if len(rates) > 1:
        shown = ", ".join(f"{rate} Hz ({name})" for rate, name in sorted(rates.items()))
        raise ReportError(f"the .wav inputs are sampled at different rates: {shown}; give --sample-rate and "
                          "resample the others")
    if skipped and not kept:
        raise ReportError(f"none of the {len(skipped)} .wav files could be read (e.g. {skipped[0]})")
    return kept, notes, skipped, next(iter(rates)) if rates else 0


def load_wav(path: Path, channels: int | None) -> torch.Tensor:
    """One file as the model takes it: (channels, length), stereo mixed down for a mono model."""
    samples, _, _ = read_wav(path)
    if channels == 1 and samples.shape[0] > 1:
        samples = samples.mean(dim=0, keepdim=True)
    return samples
