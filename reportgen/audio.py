"""Audio inputs: `.wav` files read with the standard library's `wave` (no extra dependency).

Integer PCM only, as `wave` reads it: 8-bit (unsigned, 128 is silence), 16-, 24- and 32-bit
(signed, little endian), any number of channels, interleaved. Samples become float32 in
[-1, 1): value / 2^(bits - 1) (8-bit: (value - 128) / 128), so a file written from known values
reads back exactly. One input is (channels, samples), the layout a Conv1d takes.

What is refused, in one line naming the file: anything `wave` cannot read (not RIFF/WAVE, a
float or compressed format, a truncated header), a sample rate other than `--sample-rate` (or,
without it, other than the first file's: one run, one rate; nothing is resampled), and files of
different lengths (a batch needs one length; trim or pad them first). A stereo file for a
one-channel model is averaged to mono, and the input's note says so.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reportgen.errors import ReportError, one_line

AUDIO_SUFFIXES = frozenset({".wav", ".wave"})


@dataclass(frozen=True)
class Wav:
    samples: np.ndarray  # (channels, frames) float32 in [-1, 1)
    rate: int
    bits: int


def read_wav(path: Path) -> Wav:
    """The file's samples (module doc), or a one-line ReportError."""
    try:
        with wave.open(str(path), "rb") as reader:
            channels, width, rate, frames = (reader.getnchannels(), reader.getsampwidth(), reader.getframerate(),
                                             reader.getnframes())
            data = reader.readframes(frames)
    except (wave.Error, EOFError, OSError) as exc:
        raise ReportError(f"cannot read {path}: not an integer PCM .wav file ({one_line(exc)})") from exc
    if width not in (1, 2, 3, 4) or channels < 1:
        raise ReportError(f"cannot read {path}: {8 * width}-bit samples are not integer PCM of 8, 16, 24 or 32 bits")
    count = len(data) // (width * channels)
    if count == 0:
        raise ReportError(f"cannot read {path}: it holds no samples")
    raw = np.frombuffer(data[: count * width * channels], dtype=np.uint8).reshape(count * channels, width)
    if width == 1:
        values = (raw[:, 0].astype(np.float64) - 128.0) / 128.0
    else:
        # little-endian signed integers of `width` bytes, widened to int64 by sign extension
        padded = np.zeros((raw.shape[0], 8), dtype=np.uint8)
        padded[:, 8 - width:] = raw
        values = (padded.view("<i8")[:, 0] >> (8 * (8 - width))).astype(np.float64) / float(1 << (8 * width - 1))
    samples = values.reshape(count, channels).T.astype(np.float32)
    return Wav(np.ascontiguousarray(samples), rate, 8 * width)


def check_rates(waves: Sequence[tuple[Path, Wav]], sample_rate: int | None) -> int:
    """The run's one sample rate (see the module doc)."""
    expected = sample_rate if sample_rate is not None else waves[0][1].rate
    for path, found in waves:
        if found.rate != expected:
            why = (f"--sample-rate is {sample_rate} Hz" if sample_rate is not None
                   else f"{waves[0][0].name} is {expected} Hz and one run takes one rate")
            raise ReportError(f"{path} is sampled at {found.rate} Hz but {why}; resample it first "
                              "(reportgen does not resample)")
    return expected


@dataclass(frozen=True)
class InputSetParts:
    """What `inputs.load_paths` makes an InputSet of."""

    names: list[str]
    tensors: list[torch.Tensor]
    notes: list[str]
    rate: int


def read_wavs(paths: Sequence[Path], channels: int | None, sample_rate: int | None = None) -> InputSetParts:
    """Read every file (they are small next to images: read once), check rate and length."""
    waves = [(path, read_wav(path)) for path in paths]
    rate = check_rates(waves, sample_rate)
    lengths = {found.samples.shape[1] for _, found in waves}
    if len(lengths) > 1:
        sizes = ", ".join(f"{path.name}: {found.samples.shape[1]}" for path, found in waves[:4])
        raise ReportError(f"the .wav files have different lengths ({sizes} samples); a batch needs one length: "
                          "trim or pad them first")
    tensors, notes = [], []
    for path, found in waves:
        samples = found.samples
        note = f"{found.bits}-bit PCM, {rate} Hz, {samples.shape[0]} channel(s), {samples.shape[1]} samples"
        if channels == 1 and samples.shape[0] > 1:
            samples = samples.mean(axis=0, keepdims=True)
            note += f"; its {found.samples.shape[0]} channels averaged to mono for the model's one input channel"
        elif channels is not None and samples.shape[0] != channels:
            raise ReportError(f"{path} has {samples.shape[0]} channel(s) but the model takes {channels}")
        tensors.append(torch.from_numpy(samples.copy()))
        notes.append(note)
    return InputSetParts([path.name for path in paths], tensors, notes, rate)
