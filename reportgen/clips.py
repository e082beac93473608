"""Video clips for Conv3d models: an animated image file (GIF, WebP, APNG), or a folder of frame
images (`--clip DIR`, frames in sorted file-name order), is one (C, T, H, W) input.

Frames are sampled to the model's clip length T: frame indices round(linspace(0, n - 1, T)), so
the first and the last frame are always in and the rest are evenly spread (a clip shorter than
T repeats frames, which the page says). T comes from `--input-shape` (C,T,H,W) or the weights'
metadata; without either, every frame is used up to DEFAULT_FRAMES, sampled the same way. Each
frame is preprocessed like an image (resize, crop, normalisation) before the frames are stacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import ReportError, one_line
from reportgen.untrusted import refuse_huge_images

DEFAULT_FRAMES = 16  # the clip length torchvision's video models were trained with


def frame_indices(count: int, length: int) -> list[int]:
    """`length` indices into `count` frames: first and last always, evenly spread between."""
    if count < 1 or length < 1:
        return []
    return [int(round(i)) for i in np.linspace(0, count - 1, length)]


def animated_frames(path: Path) -> list[Any]:
    """Every frame of an animated image file, as RGB(A)/L PIL images (each fully decoded)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with refuse_huge_images(), Image.open(path) as image:
            frames = [frame.copy() for frame in ImageSequence.Iterator(image)]
    except FileNotFoundError as exc:
        raise ReportError(f"input not found: {path}") from exc
    except UnidentifiedImageError as exc:
        raise ReportError(f"not an image or clip PIL can read: {path}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ReportError(f"cannot read clip {path}: {one_line(exc)}") from exc
    return [frame.convert("RGBA") if frame.mode == "P" else frame for frame in frames]


def folder_frames(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """The frame images of a `--clip` folder, in sorted file-name order."""
    if not folder.is_dir():
        raise ReportError(f"--clip {folder}: not a folder" if folder.exists() else f"--clip folder not found: {folder}")
    frames = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                    and not p.name.startswith("."))
    if not frames:
        raise ReportError(f"--clip {folder} holds no frame images")
    return frames


def sampling_note(count: int, length: int, how: str) -> str:
    indices = frame_indices(count, length)
    repeated = " (a clip shorter than that: frames repeat)" if count < length else ""
    shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
    return f"{count} frames sampled to {length} ({how}): frames {shown}{repeated}"


def clip_length(hint: Sequence[int] | None) -> int | None:
    """T of a (C, T, H, W) shape from --input-shape or the weights' metadata, if given."""
    return int(hint[1]) if hint is not None and len(hint) == 4 else None
