"""The input as the model saw it, as one small picture, whatever its rank.

- (C, H, W) images (files, image-like tensors): de-normalised (`preprocess.seen_values`),
  stretched by their own min and max when that leaves [0, 1] (the note says so), at most
  THUMBNAIL_SIZE px a side (area interpolation);
- (C, L) or (L,) signals: a waveform (`plots.py`): one line plot per channel (at most
  MAX_WAVE_CHANNELS, stacked), WAVE_WIDTH pixel columns, each column a bin of samples drawn as its
  min-max band and its mean, on the row's own min-max scale;
- (C, T, H, W) clips: up to MAX_FRAMES frames evenly spread over T, side by side with FRAME_GAP
  white columns between, one de-normalisation and stretch for the whole clip, each frame at
  most FRAME_SIZE px a side.

1D signals also get a spectrogram (`spectrogram`), drawn under the thumbnail.

The layout of a clip's strip is a function of the input's shape alone (`clip_layout`), so the
Grad-CAM overlay finds each frame in it without being told.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reportgen.gradcam import overlay
from reportgen.palettes import LEVELS, palette
from reportgen.plots import envelope_plots, gray_values, signal_envelopes, zero_levels
from reportgen.preprocess import Preprocessing, seen_values

THUMBNAIL_SIZE = 96
WAVE_WIDTH = 96
WAVE_HEIGHT = 32
MAX_WAVE_CHANNELS = 4
MAX_FRAMES = 4
FRAME_SIZE = 64
FRAME_GAP = 2
CAM_STRIP_HEIGHT = 8  # the 1D Grad-CAM heat strip under a waveform


@dataclass(frozen=True)
class Thumbnail:
    picture: np.ndarray | None  # uint8 (H, W) gray or (H, W, 3) RGB
    note: str = ""  # what the picture rests on, or why there is none


@dataclass(frozen=True)
class ClipLayout:
    frames: tuple[int, ...]  # frame indices shown, left to right
    height: int  # of each frame in the strip
    width: int


def clip_layout(shape: tuple[int, ...]) -> ClipLayout:
    """Frames shown and their size for a (C, T, H, W) clip."""
    time, height, width = shape[-3:]
    frames = tuple(sorted({int(round(t)) for t in np.linspace(0, time - 1, min(time, MAX_FRAMES))}))
    scale = min(1.0, FRAME_SIZE / max(height, width))
    return ClipLayout(frames, max(1, round(height * scale)), max(1, round(width * scale)))


def draw(sample: torch.Tensor, preprocessing: Preprocessing | None) -> Thumbnail:
    """The thumbnail of one input (no batch dim), and a note on how it was drawn."""
    if not sample.is_floating_point():
        kind = str(sample.dtype).replace("torch.", "")
        return Thumbnail(None, f"no thumbnail: {kind} values (not an image or signal)")
    if sample.dim() == 3:
        return _image(sample, preprocessing)
    if sample.dim() in (1, 2):
        return _waveform(sample if sample.dim() == 2 else sample[None])
    if sample.dim() == 4:
        return _clip(sample, preprocessing)
    return Thumbnail(None, f"no thumbnail: {sample.dim()}D inputs have no picture")


def _notes(channels: int, stretched: tuple[float, float] | None) -> list[str]:
    notes = [] if channels in (1, 3) else [f"thumbnail: the mean of its {channels} channels"]
    if stretched is not None:
        low, high = stretched
        notes.append(f"thumbnail stretched from its own min {low:.4g} (black) to max {high:.4g} (white)")
    return notes


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8, +0.5 before the cast."""
    array = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0).copy()


def _fit(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image[None], size=[height, width], mode="area")[0]


def _image(sample: torch.Tensor, preprocessing: Preprocessing | None) -> Thumbnail:
    image, stretched = seen_values(sample, preprocessing)
    height, width = image.shape[1:]
    if max(height, width) > THUMBNAIL_SIZE:
        scale = THUMBNAIL_SIZE / max(height, width)
        image = _fit(image, max(1, round(height * scale)), max(1, round(width * scale)))
    return Thumbnail(_to_uint8(image), "; ".join(_notes(sample.shape[0], stretched)))


def _clip(sample: torch.Tensor, preprocessing: Preprocessing | None) -> Thumbnail:
    clip, stretched = seen_values(sample, preprocessing)  # (C, T, H, W), one scale for all frames
    layout = clip_layout(tuple(sample.shape))
    frames = [_to_uint8(_fit(clip[:, t], layout.height, layout.width)) for t in layout.frames]
    gap = np.full((layout.height, FRAME_GAP, *frames[0].shape[2:]), 255, dtype=np.uint8)
    parts = [part for frame in frames for part in (gap, frame)][1:]
    shown = ", ".join(str(t) for t in layout.frames)
    notes = [f"frames {shown} of {sample.shape[1]} (left to right)", *_notes(sample.shape[0], stretched)]
    return Thumbnail(np.concatenate(parts, axis=1), "; ".join(notes))


def _waveform(signal: torch.Tensor) -> Thumbnail:
    values = torch.nan_to_num(signal.detach().double().cpu()[:MAX_WAVE_CHANNELS]).numpy()
    length = values.shape[1]
    low, high = values.min(axis=1), values.max(axis=1)
    bins = min(length, WAVE_WIDTH)
    repeat = max(1, WAVE_WIDTH // bins)
    envelopes = signal_envelopes(values, bins, low, high)
    plots = envelope_plots(envelopes, zero_levels(low, high), high <= low, height=WAVE_HEIGHT, repeat=repeat)
    picture = gray_values(np.concatenate(list(plots), axis=0))
    per = (f"{length} samples in {bins} columns: gray band = each column's min to max, black = mean" if bins < length
           else f"one column per sample ({length})")
    if len(values) == 1:
        scale = f"bottom = min {low[0]:.4g}, top = max {high[0]:.4g}"
    else:
        ranges = "; ".join(f"{lo:.4g} to {hi:.4g}" for lo, hi in zip(low, high))
        scale = f"channels 0–{len(values) - 1} of {signal.shape[0]} stacked, each from its own min to max ({ranges})"
    return Thumbnail(picture, f"waveform, {scale}; {per}; mid-gray line = 0")


SPECTROGRAM_WIDTH = 96
SPECTROGRAM_HEIGHT = 48
SPECTROGRAM_RANGE_DB = 80.0


def spectrogram_fft(length: int) -> int | None:
    """The STFT size for a signal of `length` samples: the largest power of 2 <= length / 4,
    at most 256; None (no spectrogram) under 16."""
    size = 1 << max(0, (length // 4).bit_length() - 1) if length >= 4 else 0
    size = min(size, 256)
    return size if size >= 16 else None


def spectrogram(sample: torch.Tensor) -> np.ndarray | None:
    """A (C, L) or (L,) signal's spectrogram as an RGB picture, None for other inputs.

    The channels' mean, STFT with a Hann window of `spectrogram_fft(L)` samples and a hop of a
    quarter of it (torch.stft, centred), power |X|^2 in dB (10 log10(p + 1e-12)), clipped to the
    80 dB below its max; frames and frequency bins average-pooled (in dB) to at most 96 x 48;
    level = floor((dB - low) / (high - low) * 253 + 0.5) on viridis, low frequencies at the bottom.
    """
    if not sample.is_floating_point() or sample.dim() not in (1, 2):
        return None
    signal = (sample if sample.dim() == 1 else sample.float().mean(dim=0)).double()
    size = spectrogram_fft(signal.shape[-1])
    if size is None or not bool(torch.isfinite(signal).all()):
        return None
    spectrum = torch.stft(signal, n_fft=size, hop_length=size // 4, window=torch.hann_window(size, dtype=signal.dtype),
                          center=True, return_complex=True)
    decibels = 10 * torch.log10(spectrum.abs() ** 2 + 1e-12)  # (frequencies, frames)
    high = float(decibels.max())
    low = high - SPECTROGRAM_RANGE_DB
    decibels = decibels.clamp(min=low)
    rows, columns = decibels.shape
    pooled = F.adaptive_avg_pool2d(decibels[None, None], (min(rows, SPECTROGRAM_HEIGHT),
                                                          min(columns, SPECTROGRAM_WIDTH)))[0, 0]
    levels = torch.floor((pooled - low) / (high - low) * (LEVELS - 1) + 0.5).clamp(0, LEVELS - 1)
    table = np.frombuffer(palette("viridis"), dtype=np.uint8).reshape(-1, 3)
    return np.ascontiguousarray(table[levels.flip(0).numpy().astype(np.int64)])


def cam_overlay(thumbnail: np.ndarray, cam: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """A Grad-CAM map of any rank on the thumbnail `draw` made for an input of `input_shape`
    (no batch dim); 2D maps as `gradcam.overlay` lays them.

    1D maps: a heat strip CAM_STRIP_HEIGHT px high under the waveform, the map interpolated
    linearly onto its columns. 3D maps: each frame of the strip gets the map interpolated
    (trilinear) to the clip's T x frame size, at that frame's time (a 3D map over an input
    that is not a clip: its mean over the first axis, as a 2D map)."""
    if cam.ndim == 2:
        return overlay(thumbnail, cam)
    if cam.ndim == 1:
        width = thumbnail.shape[1]
        strip = np.zeros((CAM_STRIP_HEIGHT, width), dtype=np.uint8)  # black where cold
        heat = F.interpolate(torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None], size=width,
                             mode="linear", align_corners=False)[0, 0].numpy()
        coloured = overlay(strip, np.repeat(heat[None], CAM_STRIP_HEIGHT, axis=0))
        base = thumbnail if thumbnail.ndim == 3 else np.repeat(thumbnail[..., None], 3, axis=2)
        gap = np.full((1, width, 3), 255, dtype=np.uint8)
        return np.concatenate([base, gap, coloured], axis=0)
    if len(input_shape) != 4:  # a 3D layer over an input that is not a clip: its mean over time
        return overlay(thumbnail, cam.mean(axis=0))
    layout = clip_layout(input_shape)
    volume = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    heat = F.interpolate(volume, size=(input_shape[-3], layout.height, layout.width), mode="trilinear",
                         align_corners=False)[0, 0].numpy()
    picture = thumbnail if thumbnail.ndim == 3 else np.repeat(thumbnail[..., None], 3, axis=2)
    picture = picture.copy()
    for number, t in enumerate(layout.frames):
        left = number * (layout.width + FRAME_GAP)
        frame = picture[:, left:left + layout.width]
        picture[:, left:left + layout.width] = overlay(frame, heat[t])
    return picture

