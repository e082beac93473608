"""The load stage for inputs: files, folders, tensors or synthetic probes -> an `InputSet`.

An InputSet loads one input at a time (`load(i)`), so any number of inputs can stream through
the analysis in batches without all of them being in memory at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reportgen.errors import ReportError
from reportgen.preprocess import Preprocessing

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass
class InputSet:
    """Named inputs, loaded lazily. `load(i)` returns the model-ready (C, ...) tensor."""

    names: list[str]
    loader: Callable[[int], torch.Tensor]
    labels: list[int | None] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> torch.Tensor:
        return self.loader(index)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        tensors = [self.load(i) for i in range(start, stop)]
        first = tensors[0].shape
        for i, tensor in zip(range(start, stop), tensors):
            if tensor.shape != first:
                raise ReportError(
                    f"inputs differ in shape: {self.names[start]} is {list(first)} but "
                    f"{self.names[i]} is {list(tensor.shape)}; pass --resize H,W to make them equal"
                )
        return torch.stack(tensors)

    def label(self, index: int) -> int | None:
        return self.labels[index] if index < len(self.labels) else None


def from_tensor(batch: torch.Tensor, names: Sequence[str] | None = None) -> InputSet:
    """A (N, C, ...) tensor: each row is one input."""
    if batch.dim() < 2:
        raise ReportError(f"an input tensor needs a batch and a channel dimension, got {list(batch.shape)}")
    count = batch.shape[0]
    labels = list(names) if names is not None else [f"input-{i:02d}" for i in range(count)]
    return InputSet(names=labels, loader=lambda i: batch[i])


def from_tensors(tensors: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> InputSet:
    """A list of per-input tensors, each (C, ...) or (1, C, ...)."""
    items = [t[0] if t.dim() >= 2 and t.shape[0] == 1 and t.dim() >= 4 else t for t in tensors]
    labels = list(names) if names is not None else [f"input-{i:02d}" for i in range(len(items))]
    return InputSet(names=labels, loader=lambda i: items[i])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expand_paths(specs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders recursively (sorted), globs expanded; duplicates kept once."""
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        path = Path(text)
        if any(ch in text for ch in "*?[") and not path.exists():
            matches = sorted(Path().glob(text)) if not path.is_absolute() else sorted(
                Path(path.anchor).glob(str(path.relative_to(path.anchor)))
            )
            if not matches:
                raise ReportError(f"no files match {text!r}")
            found.extend(m for m in matches if m.is_file())
        elif path.is_dir():
            images = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not images:
                raise ReportError(f"no images found in folder {text}")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise ReportError(f"input not found: {text}")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path), path)
    return list(unique.values())


def open_image(path: Path) -> Any:
    """Decode an image fully, turning every PIL failure into a one-line user error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if image.mode != "P" else image.convert("RGBA" if "transparency" in image.info else "RGB")
    except Image.DecompressionBombError as exc:
        raise ReportError(f"image too large to open safely: {path} ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ReportError(f"not an image PIL can read: {path}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReportError(f"cannot read image {path}: {exc}") from exc


def from_image_files(
    paths: Sequence[Path], preprocessing: Preprocessing, *, labels: Sequence[int | None] | None = None
) -> InputSet:
    """Image files -> InputSet. Each file is decoded when its batch runs, not before."""

    def load(index: int) -> torch.Tensor:
        return preprocessing.to_tensor(open_image(paths[index]))

    names = [path.name for path in paths]
    return InputSet(
        names=names,
        loader=load,
        labels=list(labels) if labels is not None else [],
        paths=[str(p) for p in paths],
        preprocessing=preprocessing,
    )


def synthetic_probes(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> InputSet:
    """Seeded probe inputs when the user gave none: smooth noise, a gradient, stripes, a blob.

    They are not real data, and the report says so; they still show how each filter responds to
    edges, orientation and blobs.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, spatial = shape[0], shape[1:]
    probes: list[torch.Tensor] = []
    names: list[str] = []
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in spatial], indexing="ij") if spatial else ()
    kinds = ["noise", "gradient", "stripes", "blob"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "noise" or not spatial:
            probe = torch.rand((channels, *spatial), generator=generator)
        elif kind == "gradient":
            probe = ((grids[-1] + 1) / 2).expand(channels, *spatial).clone()
        elif kind == "stripes":
            probe = ((torch.sin(grids[-1] * 12 + grids[0] * 6) + 1) / 2).expand(channels, *spatial).clone()
        else:
            radius = sum(g**2 for g in grids)
            probe = torch.exp(-radius * 4).expand(channels, *spatial).clone()
        probes.append(probe.float())
        names.append(f"probe-{i:02d}-{kind}")
    dims = "x".join(str(d) for d in shape)
    return InputSet(
        names=names,
        loader=lambda i: probes[i],
        notes=[f"No inputs were given: {count} synthetic probe inputs of shape {dims} were used."],
        synthetic=True,
    )
