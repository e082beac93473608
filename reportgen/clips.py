"""Video clips for models that take (C, T, H, W): animated images, folders of frames, video files.

A clip is an animated GIF, WebP or PNG (every frame PIL decodes, in order, each converted as a
still image would be), a folder of frame images given with `--clip DIR` (its images sorted by
name, one clip per folder), or a video file (.mp4, .m4v, .mov, .avi, .mkv, .webm) decoded with
PyAV (`import av`, the `video` extra; without it, one line says what to install), each frame
converted to RGB as FFmpeg decodes it (`frame.to_ndarray(format="rgb24")`). PyAV is called
directly, not through torchvision.io, which deprecated its video functions in torchvision 0.22
and dropped them in 0.26. The model's clip length T (`--input-shape C,T,H,W`, else
`DEFAULT_FRAMES`: torchvision's video weights were trained on 16-frame clips) is met by sampling
frame indices round(linspace(0, n - 1, T)): frames are skipped evenly when the clip is longer and
repeated when it is shorter, and the input's note names the indices. Each frame is preprocessed
like an image (resize, crop, normalise: `Preprocessing.to_tensor`) and the frames are stacked on
dim 1. A still image, an unreadable or corrupt file, a video with fewer than 2 frames or a folder
without frames is refused in one line.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reportgen.errors import ReportError, one_line
from reportgen.preprocess import Preprocessing
from reportgen.untrusted import refuse_huge_images

DEFAULT_FRAMES = 16
MAX_SOURCE_FRAMES = 10_000  # frames a clip may hold before it is refused (a decompression bomb in time)


def frame_indices(count: int, frames: int) -> list[int]:
    """round(linspace(0, count - 1, frames)) (numpy rounds halves to even)."""
    return [int(i) for i in np.round(np.linspace(0, count - 1, frames))]


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The clip file opened with PIL; every PIL failure inside becomes a one-line user error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with refuse_huge_images(), Image.open(path) as image:
            yield image
    except FileNotFoundError as exc:
        raise ReportError(f"input not found: {path}") from exc
    except UnidentifiedImageError as exc:
        raise ReportError(f"not an image PIL can read: {path}") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ReportError(f"cannot read clip {path}: {one_line(exc)}") from exc


def count_frames(path: Path) -> int:
    """How many frames an animated image holds (its header, and a scan for GIF), or a one-line error."""
    with _opened(path) as image:
        count = int(getattr(image, "n_frames", 1))
    if count < 2:
        raise ReportError(f"{path} is a still image, not a clip: the model takes (C, T, H, W) clips; give an "
                          "animated GIF/WebP/PNG, or a folder of frames with --clip DIR")
    if count > MAX_SOURCE_FRAMES:
        raise ReportError(f"{path} holds {count} frames, more than the {MAX_SOURCE_FRAMES} reportgen reads")
    return count


def animated_frames(path: Path) -> list[Any]:
    """Every frame of an animated image file, as decoded PIL images, or a one-line error."""
    from PIL import ImageSequence

    count_frames(path)
    with _opened(path) as image:
        return [frame.copy() for frame in ImageSequence.Iterator(image)]


VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})
VIDEO_HINT = ("reading video files needs PyAV: pip install 'reportgen[video]' "
              "(or give the clip as an animated GIF/WebP/PNG, or a folder of frames with --clip DIR)")


def _pyav() -> Any:
    """The `av` module (PyAV), or the one-line error that says what to install."""
    try:
        import av
    except ImportError as exc:
        if exc.name == "av":  # not installed (or blocked: sys.modules["av"] = None)
            raise ReportError(VIDEO_HINT) from exc
        raise ReportError(f"PyAV is installed but does not import ({one_line(exc)}); reinstall it: "
                          "pip install --force-reinstall 'av>=11'") from exc
    return av


def check_video_backend() -> None:
    """Fail before any pass when a video file cannot be decoded here."""
    _pyav()


def video_frames(path: Path, keep: Collection[int] | None = None) -> list[Any]:
    """A video file's frames in decoding order, or a one-line error. The list has one entry per
    decoded frame: an RGB PIL image (`frame.to_ndarray(format="rgb24")`: FFmpeg's own conversion
    from the stream's pixel format) where the index is in `keep` (every frame when None), else
    None, so counting (`keep=()`) and sampling hold only the frames they need in memory."""
    av = _pyav()
    from PIL import Image

    frames: list[Any] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ReportError(f"{path} holds no video stream")
            stream = container.streams.video[0]
            pixels = stream.codec_context.width * stream.codec_context.height
            if pixels > (Image.MAX_IMAGE_PIXELS or pixels):
                raise ReportError(f"{path}: frames of {pixels} pixels, more than the {Image.MAX_IMAGE_PIXELS} "
                                  "reportgen decodes")
            for frame in container.decode(stream):
                if len(frames) == MAX_SOURCE_FRAMES:
                    raise ReportError(f"{path} holds more than the {MAX_SOURCE_FRAMES} frames reportgen reads")
                chosen = keep is None or len(frames) in keep
                frames.append(Image.fromarray(frame.to_ndarray(format="rgb24")) if chosen else None)
    except ReportError:
        raise
    except FileNotFoundError as exc:  # PyAV's FileNotFoundError subclasses the builtin
        raise ReportError(f"input not found: {path}") from exc
    except Exception as exc:  # a file from outside: any demuxer or decoder failure (av.error.FFmpegError, ...)
        # FFmpeg's own reason without the errno and the path again, e.g. "Invalid data found when processing input"
        reason = exc.strerror if isinstance(exc, av.error.FFmpegError) and exc.strerror else one_line(exc)
        raise ReportError(f"cannot read video {path}: {reason}") from exc
    if len(frames) < 2:
        raise ReportError(f"{path} decodes to {len(frames)} frame(s); a clip needs at least 2")
    return frames


def folder_frames(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """A --clip folder's frame images (`suffixes`: the image files PIL reads), sorted by name."""
    if not folder.is_dir():
        raise ReportError(f"--clip {folder}: not a folder" if folder.exists() else f"--clip folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in suffixes)
    if len(files) < 2:
        raise ReportError(f"--clip {folder} holds {len(files)} frame image(s); a clip needs at least 2")
    return files


def clip_tensor(frames: Sequence[object], preprocessing: Preprocessing, length: int) -> torch.Tensor:
    """(C, length, H, W) from `frames` (PIL images), sampled by `frame_indices`."""
    tensors = [preprocessing.to_tensor(frames[i]) for i in frame_indices(len(frames), length)]  # type: ignore[arg-type]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ReportError(f"the clip's frames come out in different sizes {sorted(shapes)}; give --resize and "
                          "--center-crop so that every frame has one size")
    return torch.stack(tensors, dim=1)
