"""The load stage for inputs: files, folders, tensors, datasets or synthetic probes -> an `InputSet`.

An InputSet loads one input at a time (`load(i)`), so any number of inputs can stream through
the analysis in batches without all of them being in memory at once. Whatever had to change to
fit an input to the model (a gray image repeated to 3 channels, an RGBA image flattened, a rank
added to a tensor) is written into the input's notes and summarised in `InputSet.notes`.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen.audio import AUDIO_SUFFIXES, read_wavs
from reportgen.clips import (
    DEFAULT_FRAMES,
    VIDEO_SUFFIXES,
    animated_frames,
    check_video_backend,
    clip_tensor,
    count_frames,
    folder_frames,
    frame_indices,
    video_frames,
)
from reportgen.errors import ReportError, one_line
from reportgen.preprocess import IMAGE_CHANNELS, Preprocessing
from reportgen.untrusted import check_archive, refuse_huge_images

TENSOR_SUFFIXES = frozenset({".pt", ".pth", ".npy", ".npz"})
# Keys searched, in order, when a tensor file holds a dict (npz archives always do).
INPUT_KEYS = ("x", "inputs", "input", "images", "image", "data", "samples", "arr_0")
LABEL_KEYS = ("y", "labels", "label", "targets", "target")
# Sizes tried for synthetic probes when nothing says what the model takes, largest first.
PROBE_SIZES: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((1024,), (256,), (64,)),
    2: ((224, 224), (128, 128), (64, 64), (32, 32), (28, 28)),
    3: ((16, 112, 112), (16, 64, 64), (8, 32, 32)),
}
NOTE_EXAMPLES = 3  # file names quoted per kind of adaptation in the set-level note


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
    item_notes: list[tuple[str, ...]] = field(default_factory=list)
    class_names: list[str] | None = None  # from a --dataset folder's class folders
    label_source: str = "the given labels"  # where the true classes came from, for error messages
    # Per input: True where an unreadable file is skipped and listed rather than an error (files
    # found in folders, globs and --dataset, unless strict); empty: none is.
    skippable: list[bool] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)" of each unreadable input left out
    # The loader's index of each input, once an unreadable one was left out; empty: the same index.
    loader_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> torch.Tensor:
        return self.loader(self.loader_index[index] if self.loader_index else index)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Inputs start..stop-1, stacked. A skippable input that fails to load is left out of the
        set (later inputs move up one place, so the batch still holds stop - start inputs) and listed."""
        tensors = []
        while len(tensors) < stop - start:
            index = start + len(tensors)
            try:
                tensors.append(self.load(index))
            except ReportError as exc:
                if not self._can_skip(index) or len(self) - 1 < stop:
                    raise  # check_tail() saw to it that the last batch never comes up short
                self._leave_out(index, exc)
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

    def notes_for(self, index: int) -> tuple[str, ...]:
        return self.item_notes[index] if index < len(self.item_notes) else ()

    def check_tail(self, count: int) -> None:
        """Load the last `count` inputs now, leaving out skippable ones that fail, until `count`
        load (or none is left), so that `batch` can always fill a batch from the inputs after it.
        Call before a pass in batches of at most `count`."""
        index = len(self) - 1
        good = 0
        while self.skippable and good < count and index >= 0:
            try:
                self.load(index)
                good += 1
            except ReportError as exc:
                if not self._can_skip(index):
                    raise
                self._leave_out(index, exc)
            index -= 1
        if self.skipped and not len(self):
            raise ReportError(f"none of the {len(self.skipped)} inputs could be read (e.g. {self.skipped[0]})")

    def _can_skip(self, index: int) -> bool:
        return index < len(self.skippable) and self.skippable[index]

    def _leave_out(self, index: int, exc: ReportError) -> None:
        if not self.loader_index:
            self.loader_index = list(range(len(self)))
        self.skipped.append(f"{self.names[index]} ({one_line(exc)})")
        for values in (self.names, self.labels, self.paths, self.item_notes, self.skippable, self.loader_index):
            if index < len(values):
                del values[index]

    def skipped_note(self) -> str | None:
        """The unreadable inputs left out, for the report's notes."""
        if not self.skipped:
            return None
        return (f"{len(self.skipped)} unreadable input file(s) skipped, not counted anywhere in this report: "
                f"{_examples(self.skipped)}. Pass --strict (strict=True) to stop at an unreadable file instead.")

    def check_labels(self, num_classes: int, whose: str) -> None:
        """Every true class must be one of `num_classes` (`whose`: "the model outputs")."""
        for index, label in enumerate(self.labels):
            if label is not None and not 0 <= label < num_classes:
                raise ReportError(f"label {label} of input {self.names[index]} (from {self.label_source}) is not one "
                                  f"of the {num_classes} classes {whose} (0..{num_classes - 1})")


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


def concatenate(sets: Sequence[InputSet]) -> InputSet:
    """Several InputSets as one, in order (e.g. images and tensor files given together)."""
    if len(sets) == 1:
        return sets[0]
    owners = [(k, i) for k, part in enumerate(sets) for i in range(len(part))]
    preps = {id(s.preprocessing): s.preprocessing for s in sets if s.preprocessing is not None}
    return InputSet(
        names=[n for s in sets for n in s.names],
        loader=lambda index: sets[owners[index][0]].load(owners[index][1]),
        labels=[s.label(i) for s in sets for i in range(len(s))],
        paths=[s.paths[i] if i < len(s.paths) else None for s in sets for i in range(len(s))],
        notes=[n for s in sets for n in s.notes],
        preprocessing=next(iter(preps.values())) if len(preps) == 1 else None,
        item_notes=[s.notes_for(i) for s in sets for i in range(len(s))],
        class_names=next((s.class_names for s in sets if s.class_names), None),
        label_source=" and ".join(dict.fromkeys(s.label_source for s in sets if s.labels)) or "the given labels",
        skippable=[s.skippable[i] if i < len(s.skippable) else False for s in sets for i in range(len(s))]
        if any(s.skippable for s in sets) else [],
        skipped=[n for s in sets for n in s.skipped],
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- finding files ---------------------------------------------------------------------------

def image_suffixes() -> frozenset[str]:
    """Every file suffix PIL can open on this installation (JPEG, PNG, WebP, TIFF, BMP, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def _visible(path: Path, root: Path) -> bool:
    """False for anything inside a hidden folder (.git, .ipynb_checkpoints) or a hidden file."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def folder_files(folder: Path) -> list[Path]:
    """A folder's images, recursively and sorted; its tensor files if it holds no image."""
    return scan_folder(folder)[0]


def scan_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """(used, left out): a folder's images, recursively and sorted, or its tensor files if it
    holds no image; and its other visible files (hidden files and folders are not looked at)."""
    images_ok = image_suffixes()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p, folder))
    images = [p for p in files if p.suffix.lower() in images_ok]
    used = images or [p for p in files if p.suffix.lower() in TENSOR_SUFFIXES] \
        or [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    if not used:
        raise ReportError(f"no images (or .pt/.npy/.npz tensors, or .wav files) found in folder {folder}")
    chosen = set(used)
    return used, [p for p in files if p not in chosen]


@dataclass
class FoundFiles:
    """What INPUT arguments name: the files to use, which of them were found in a folder or by a
    glob (where an unreadable one is skipped, unless strict), and the folder files left out."""

    paths: list[Path]
    in_bulk: set[Path] = field(default_factory=set)
    left_out: list[Path] = field(default_factory=list)

    def left_out_note(self) -> str | None:
        if not self.left_out:
            return None
        return (f"{len(self.left_out)} file(s) in the input folders are neither images nor tensors (or are "
                f"tensors beside images) and were not used: {_examples([p.name for p in self.left_out])}.")


def expand_paths(specs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders recursively (sorted), globs expanded; duplicates kept once."""
    return find_inputs(specs).paths


def find_inputs(specs: Sequence[str | Path]) -> FoundFiles:
    """`expand_paths`, remembering which files came from folders and globs and which were left out."""
    found: list[Path] = []
    in_bulk: set[Path] = set()
    named: set[Path] = set()  # a file named on its own is never skipped, also when a folder holds it
    left_out: list[Path] = []

    def add_folder(folder: Path) -> None:
        used, others = scan_folder(folder)
        found.extend(used)
        in_bulk.update(used)
        left_out.extend(others)

    for spec in specs:
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            add_folder(path)
        elif path.is_file():
            found.append(path)
            named.add(path)
        elif any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ReportError(f"no files match {text!r}")
            for match in map(Path, matches):
                if match.is_dir():
                    add_folder(match)
                else:
                    found.append(match)
                    in_bulk.add(match)
        elif path.exists():
            raise ReportError(f"input is not a regular file: {text}")
        else:
            raise ReportError(f"input not found: {text}")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path), path)
    return FoundFiles(list(unique.values()), in_bulk - named, sorted(set(left_out) - set(found)))


# --- images ----------------------------------------------------------------------------------

# What PIL's ImageOps.exif_transpose (and torchvision's decode_image(apply_exif_orientation=True))
# does for each EXIF Orientation value, so the model sees the picture the way a camera app shows it.
EXIF_ORIENTATION = 0x0112
ORIENTATION_NOTES = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "rotated and mirrored",
    6: "rotated 90° clockwise",
    7: "rotated and mirrored",
    8: "rotated 90° counter-clockwise",
}


@dataclass(frozen=True)
class ImageHeader:
    mode: str
    size: tuple[int, int]
    has_transparency: bool
    orientation: int = 1  # EXIF Orientation; 1 (or absent): stored as shown

    def orientation_note(self) -> str | None:
        how = ORIENTATION_NOTES.get(self.orientation)
        return f"{how} per EXIF orientation {self.orientation}" if how else None


def peek_image(path: Path) -> ImageHeader:
    """Read only the header: proves the file is an image PIL knows, before any batch runs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with refuse_huge_images(), Image.open(path) as image:
            exif = png_exif(path) if image.format == "PNG" else image.getexif()
            orientation = exif.get(EXIF_ORIENTATION, 1)
            return ImageHeader(image.mode, image.size, "transparency" in image.info,
                               orientation if isinstance(orientation, int) else 1)
    except FileNotFoundError as exc:
        raise ReportError(f"input not found: {path}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ReportError(f"image too large to open safely: {path} ({exc})") from exc
    except UnidentifiedImageError as exc:
        hint = "" if path.suffix.lower() in image_suffixes() else " (tensors must end in .pt, .pth, .npy or .npz)"
        raise ReportError(f"not an image PIL can read: {path}{hint}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReportError(f"cannot read image {path}: {one_line(exc)}") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_exif(path: Path) -> Any:
    """The EXIF of a PNG file (PIL.Image.Exif, empty when it has none), found by walking its
    chunk headers. PIL's own `getexif` decodes every pixel of a PNG first, because an eXIf chunk
    may follow the image data; walking the headers reads a few bytes per chunk instead (512
    files of 224x224: 1.3 s -> 0.05 s), which matters because every file is peeked at listing,
    on every torchrun rank."""
    from PIL import Image

    exif = Image.Exif()
    with open(path, "rb") as stream:
        if stream.read(8) != PNG_SIGNATURE:
            return exif
        while len(header := stream.read(8)) == 8:
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                exif.load(stream.read(length))
                return exif
            if kind == b"IEND":
                break
            stream.seek(length + 4, 1)  # the chunk's data and its CRC
    return exif


def open_image(path: Path) -> Any:
    """Decode an image fully, turned upright by its EXIF orientation; every PIL failure becomes a
    one-line user error."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with refuse_huge_images(), Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError as exc:
        raise ReportError(f"input not found: {path}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ReportError(f"image too large to open safely: {path} ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ReportError(f"not an image PIL can read: {path}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReportError(f"cannot read image {path}: {one_line(exc)}") from exc


def from_image_files(
    paths: Sequence[Path], preprocessing: Preprocessing, *, labels: Sequence[int | None] | None = None,
    skippable: Sequence[bool] | None = None,
) -> InputSet:
    """Image files -> InputSet. Headers are read now (to fail early and to note channel
    adaptations); the pixels are decoded when their batch runs. A file marked `skippable` that
    cannot be read is left out and listed instead of being an error."""
    item_notes: list[tuple[str, ...]] = []
    by_note: dict[str, list[str]] = {}
    turned: list[str] = []
    kept: list[int] = []
    skipped: list[str] = []
    for position, path in enumerate(paths):
        try:
            header = peek_image(path)
        except ReportError as exc:
            if not (skippable and skippable[position]):
                raise
            skipped.append(f"{path.name} ({one_line(exc)})")
            continue
        kept.append(position)
        note = preprocessing.adaptation_note(header.mode, header.has_transparency)
        turn = header.orientation_note()
        item_notes.append(((f"{header.mode} image: {note}",) if note else ()) + ((turn,) if turn else ()))
        if note:
            by_note.setdefault(f"{header.mode}: {note}", []).append(path.name)
        if turn:
            turned.append(path.name)

    if skipped and not kept:
        raise ReportError(f"none of the {len(skipped)} image files could be read (e.g. {skipped[0]})")
    paths = [paths[i] for i in kept]

    def load(index: int) -> torch.Tensor:
        return preprocessing.to_tensor(open_image(paths[index]))

    return InputSet(
        names=[path.name for path in paths],
        loader=load,
        labels=[labels[i] for i in kept] if labels is not None else [],
        paths=[str(p) for p in paths],
        preprocessing=preprocessing,
        item_notes=item_notes,
        skippable=[skippable[i] for i in kept] if skippable else [],
        skipped=skipped,
        notes=([_adaptation_summary(by_note, preprocessing.target_channels)] if by_note else [])
        + ([f"{len(turned)} image(s) turned upright per their EXIF orientation tag, as a camera app shows "
            f"them ({_examples(turned)})."] if turned else []),
    )


def _examples(names: Sequence[str]) -> str:
    """The first NOTE_EXAMPLES names, and how many more."""
    more = len(names) - NOTE_EXAMPLES
    return ", ".join(names[:NOTE_EXAMPLES]) + (f" and {more} more" if more > 0 else "")


def _adaptation_summary(by_note: dict[str, list[str]], channels: int) -> str:
    parts = []
    for note, names in sorted(by_note.items()):
        parts.append(f"{len(names)} image(s) {note} ({_examples(names)})")
    return f"Channels adapted to the model's {channels}-channel input: " + "; ".join(parts) + "."


# --- tensors ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputLayout:
    """What one sample looks like to the model's first layer, to read tensor files by."""

    sample_rank: int | None  # dims of one sample, channel included (Conv2d: 3)
    channels: int | None
    layer: str = "the model"

    def describe(self) -> str:
        if self.sample_rank is None:
            return "one sample (1D) or a batch (N, ...)"
        c = str(self.channels) if self.channels else "C"
        spatial = ["L"] if self.sample_rank == 2 else ["H", "W"] if self.sample_rank == 3 else ["D", "H", "W"]
        sample = ", ".join([c, *spatial[: self.sample_rank - 1]])
        return f"({sample}) samples or (N, {sample}) batches"


def layout_of(model: nn.Module) -> InputLayout:
    """The layout the first convolution expects; unknown (any rank, batch first) without one."""
    for name, sub in model.named_modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            return InputLayout(len(sub.kernel_size) + 1, int(sub.in_channels) or None,
                               f"{name or 'the model'} ({type(sub).__name__}, {sub.in_channels} input channels)")
    return InputLayout(None, None)


def _pick(mapping: dict[str, Any], keys: Sequence[str], path: Path, what: str) -> Any:
    tensors = {k: v for k, v in mapping.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    for key in keys:
        if key in tensors:
            return tensors[key]
    if what == "input" and len(tensors) == 1:
        return next(iter(tensors.values()))
    if what == "input":
        listed = ", ".join(sorted(map(str, mapping))[:8]) or "nothing"
        raise ReportError(f"{path} holds no input tensor (keys: {listed}; expected one array or a key "
                          f"named {', '.join(keys[:4])}, ...)")
    return None


def _numpy_failure(path: Path, exc: Exception) -> ReportError:
    """numpy's many ways to fail on a foreign file, as one user error."""
    if isinstance(exc, ValueError) and ("allow_pickle" in str(exc) or "Python objects" in str(exc)):
        return ReportError(f"{path} holds Python objects, not numbers ({one_line(exc)})")
    return ReportError(f"cannot read {path}: {one_line(exc)}")


def read_tensor_file(path: Path) -> tuple[Any, Any]:
    """A .pt/.pth (weights_only), .npy or .npz file -> (inputs, labels or None), unshaped."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except Exception as exc:  # a file from outside: EOFError when empty, and so on
            raise _numpy_failure(path, exc) from exc
    check_archive(path)  # numpy and torch inflate each zip entry in full before any check
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except Exception as exc:  # a file from outside: BadZipFile, zlib.error, EOFError, ...
            raise _numpy_failure(path, exc) from exc
        return _pick(arrays, INPUT_KEYS, path, "input"), _pick(arrays, LABEL_KEYS, path, "labels")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        message = str(exc)
        if "Unsupported global" in message or "Unsupported class" in message:
            raise ReportError(f"{path} holds pickled Python objects, not a tensor; input files are read "
                              "with weights_only=True (save tensors with torch.save(tensor, path))") from exc
        if "WeightsUnpickler error:" in message:  # garbage bytes: keep the unpickler's own words only
            detail = " ".join(message.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
            raise ReportError(f"cannot read {path}: not a file torch.load can read ({detail})") from exc
        raise ReportError(f"cannot read {path}: {one_line(exc)}") from exc
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, dict):
        return _pick(data, INPUT_KEYS, path, "input"), _pick(data, LABEL_KEYS, path, "labels")
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, torch.Tensor) for t in data):
        if len(data) == 2 and data[1].dim() == 1 and data[0].dim() >= 2 and len(data[1]) == len(data[0]) \
                and not data[1].is_floating_point():
            return data[0], data[1]  # (inputs, labels), as a TensorDataset's tensors
        shapes = {tuple(t.shape) for t in data}
        if len(shapes) == 1:
            return torch.stack(list(data)), None
        raise ReportError(f"{path} holds {len(data)} tensors of different shapes, not one input tensor")
    kind = type(data).__name__
    raise ReportError(f"{path} holds a {kind}, not a tensor (expected a tensor, a dict of tensors or a list of tensors)")


def fit_rank(shape: Sequence[int], layout: InputLayout, path: Path) -> tuple[bool, int, str | None]:
    """How to read an array of `shape`: (batched, extra leading unit dims, note)."""
    rank = len(shape)
    want = layout.sample_rank
    if want is None:
        return (rank > 1, 0, None)
    if rank == want + 1:
        return (True, 0, None)
    if rank == want:
        if layout.channels == 1 and shape[0] != 1 and want >= 2:
            return (True, 1, f"read {list(shape)} as {shape[0]} one-channel samples (channel axis added)")
        return (False, 0, None)
    if rank == want - 1 and layout.channels == 1:
        return (False, 1, f"read {list(shape)} as one one-channel sample (channel axis added)")
    raise ReportError(f"{path} has shape {list(shape)}; {layout.layer} takes {layout.describe()}")


class UnreadableFile(ReportError):
    """A file that cannot be read as an input at all (not one whose shape doesn't fit)."""


class _TensorFile:
    """One tensor file: its rows are inputs. Holds a memory map (.npy) or reloads on demand."""

    def __init__(self, path: Path, layout: InputLayout) -> None:
        self.path = path
        self.layout = layout
        try:
            data, labels = read_tensor_file(path)
        except ReportError as exc:
            raise UnreadableFile(str(exc)) from exc
        self.shape = tuple(int(d) for d in data.shape)
        self.batched, self.unit_dims, self.note = fit_rank(self.shape, layout, path)
        self.count = self.shape[0] if self.batched else 1
        self.labels = self._labels(labels)
        self._data = data if isinstance(data, np.memmap) else None
        self._cached: Any = data

    def _labels(self, labels: Any) -> list[int | None] | None:
        if labels is None:
            return None
        values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if values.dtype.kind not in "iu" or len(values) != self.count:
            raise ReportError(f"{self.path}: labels must be {self.count} integers, got shape {list(values.shape)} "
                              f"of {values.dtype}")
        return [int(v) for v in values]

    def _array(self) -> Any:
        if self._cached is None:
            self._cached = read_tensor_file(self.path)[0]
        return self._cached

    def release(self) -> None:
        """Drop the decoded contents (a memory map costs nothing to keep)."""
        if self._data is None:
            self._cached = None

    def row(self, index: int) -> torch.Tensor:
        data = self._array()
        item = data[index] if self.batched else data
        if self.unit_dims:
            item = item[None]
        tensor = item.clone() if isinstance(item, torch.Tensor) else torch.from_numpy(np.array(item))
        if self.layout.sample_rank is not None and not tensor.is_floating_point():
            tensor = tensor.float()  # a conv takes floats; integer pixel values are kept as they are
        return tensor


def from_tensor_files(paths: Sequence[Path], layout: InputLayout, *, skippable: Sequence[bool] | None = None) -> InputSet:
    """.pt/.pth/.npy/.npz files, each one sample or a batch (first axis) -> InputSet. A file marked
    `skippable` that cannot be read is left out and listed; one whose shape doesn't fit is an error."""
    files: list[_TensorFile] = []
    skipped: list[str] = []
    for position, path in enumerate(paths):
        try:
            files.append(_TensorFile(path, layout))
        except UnreadableFile as exc:
            if not (skippable and skippable[position]):
                raise
            skipped.append(f"{path.name} ({one_line(exc)})")
    if not files:
        raise ReportError(f"none of the {len(skipped)} tensor files could be read (e.g. {skipped[0]})")
    owners: list[tuple[int, int]] = []
    names: list[str] = []
    labels: list[int | None] = []
    item_notes: list[tuple[str, ...]] = []
    notes: list[str] = []
    for k, tensor_file in enumerate(files):
        for row in range(tensor_file.count):
            owners.append((k, row))
            names.append(f"{tensor_file.path.name}[{row}]" if tensor_file.batched else tensor_file.path.name)
            labels.append(tensor_file.labels[row] if tensor_file.labels else None)
            item_notes.append((tensor_file.note,) if tensor_file.note else ())
        if tensor_file.note:
            notes.append(f"{tensor_file.path.name}: {tensor_file.note}.")
        if len(files) > 1:
            tensor_file.release()
    notes.append(f"Tensor inputs ({len(files)} file(s), {len(owners)} sample(s)) are used as stored: "
                 "no resizing or normalisation; integer arrays are converted to float32.")
    last: list[int] = [-1]

    def load(index: int) -> torch.Tensor:
        k, row = owners[index]
        if last[0] != k and last[0] >= 0:
            files[last[0]].release()  # keep at most one decoded file in memory
        last[0] = k
        return files[k].row(row)

    return InputSet(
        names=names,
        loader=load,
        labels=labels if any(label is not None for label in labels) else [],
        label_source="the labels stored in the tensor files",
        paths=[str(files[k].path) for k, _ in owners],
        notes=notes,
        item_notes=item_notes,
        skipped=skipped,
    )


def load_paths(specs: Sequence[str | Path], preprocessing: Preprocessing, layout: InputLayout, *,
               strict: bool = False, sample_rate: int | None = None, clip_frames: int = DEFAULT_FRAMES) -> InputSet:
    """INPUT arguments (files, folders, globs; images, tensor files, .wav files) -> one InputSet,
    in order. An unreadable image or tensor file found in a folder or by a glob is skipped and
    listed, unless `strict`; a file named on its own must be readable. `sample_rate`: the rate
    every .wav file must have (audio.py). For a model that takes (C, T, H, W), image files are
    clips of `clip_frames` frames (clips.py)."""
    found = find_inputs(specs)
    paths = found.paths
    groups: list[tuple[str, list[Path]]] = []
    for path in paths:
        suffix = path.suffix.lower()
        kind = "tensor" if suffix in TENSOR_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES \
            else "video" if suffix in VIDEO_SUFFIXES else "image"
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(path)
        else:
            groups.append((kind, [path]))
    as_clips = layout.sample_rank == 4  # a Conv3d model: image files are clips (clips.py)
    if any(kind == "image" for kind, _ in groups):
        check_image_channels(preprocessing, layout, clips=as_clips)
    if any(kind == "video" for kind, _ in groups):
        videos = [path for kind, group in groups if kind == "video" for path in group]
        if not as_clips:
            raise ReportError(f"{videos[0]} is a video, but {layout.layer} takes {layout.describe()}")
        check_video_backend()
    audio = [path for kind, group in groups if kind == "audio" for path in group]
    sounds = from_wav_files(audio, layout, sample_rate) if audio else {}
    sets = []
    for kind, group in groups:
        skippable = [not strict and p in found.in_bulk for p in group]
        if kind == "audio":
            sets.append(from_tensors([sounds[path][0] for path in group], [path.name for path in group]))
            sets[-1].item_notes = [(sounds[path][1],) for path in group]
            sets[-1].paths = [str(path) for path in group]
        elif kind in ("image", "video") and as_clips:
            sets.append(from_clips([(path, None) for path in group], preprocessing, clip_frames))
        else:
            sets.append(from_tensor_files(group, layout, skippable=skippable) if kind == "tensor"
                        else from_image_files(group, preprocessing, skippable=skippable))
    inputs = concatenate(sets)
    note = found.left_out_note()
    if note:
        inputs.notes.append(note)
    return inputs


def from_wav_files(paths: Sequence[Path], layout: InputLayout,
                   sample_rate: int | None) -> dict[Path, tuple[torch.Tensor, str]]:
    """Every .wav file of the run, read together (one rate, one length: audio.py): path ->
    ((channels, samples) tensor, its note)."""
    if layout.sample_rank is not None and layout.sample_rank != 2:
        raise ReportError(f"{paths[0]} is audio, (channels, samples), but {layout.layer} takes "
                          f"{layout.describe()}")
    read = read_wavs(paths, layout.channels, sample_rate)
    return {path: (tensor, note) for path, tensor, note in zip(paths, read.tensors, read.notes)}


def from_clips(sources: Sequence[tuple[Path, list[Path] | None]], preprocessing: Preprocessing,
               frames: int) -> InputSet:
    """Clips -> InputSet of (C, frames, H, W): each source an animated image or a video file (files
    None) or a --clip folder's frame files. Frame counts are read now (to fail early); pixels when
    the batch runs, of a video's sampled frames only."""
    def is_video(path: Path) -> bool:
        return path.suffix.lower() in VIDEO_SUFFIXES

    # a video's frames are only known once decoded (a container's frame count is optional and not
    # always right): decoded here once without converting any frame, so memory stays flat
    counts = [len(files) if files is not None else len(video_frames(path, keep=())) if is_video(path)
              else count_frames(path) for path, files in sources]

    def decoded(index: int) -> list[Any]:
        path, files = sources[index]
        if files is not None:
            return [open_image(file) for file in files]
        if not is_video(path):
            return animated_frames(path)
        pictures = video_frames(path, keep=frozenset(frame_indices(counts[index], frames)))  # only those sampled
        if len(pictures) != counts[index]:
            raise ReportError(f"{path} decoded to {len(pictures)} frames, not the {counts[index]} counted before "
                              "the pass: did the file change?")
        return pictures

    def load(index: int) -> torch.Tensor:
        return clip_tensor(decoded(index), preprocessing, frames)

    notes = []
    for count in counts:
        chosen = frame_indices(count, frames)
        how = "every frame" if chosen == list(range(count)) else \
            ("frames repeated to fill the model's length" if count < frames else "frames sampled evenly")
        notes.append((f"clip of {count} frames -> {frames} ({how}: {', '.join(map(str, chosen[:20]))}"
                      f"{', ...' if len(chosen) > 20 else ''})",))
    return InputSet(names=[path.name for path, _ in sources], loader=load, paths=[str(path) for path, _ in sources],
                    preprocessing=preprocessing, item_notes=notes)


def load_clip_folders(folders: Sequence[str | Path], preprocessing: Preprocessing, frames: int) -> InputSet:
    """`--clip DIR` arguments: one clip per folder of frame images."""
    return from_clips([(Path(folder), folder_frames(Path(folder), image_suffixes())) for folder in folders],
                      preprocessing, frames)


def check_image_channels(preprocessing: Preprocessing, layout: InputLayout, *, clips: bool = False) -> None:
    if layout.channels is not None and layout.channels not in IMAGE_CHANNELS:
        raise ReportError(f"{layout.layer} takes {layout.channels} channels, which images cannot provide "
                          "(1, 3 or 4); give the inputs as .pt/.npy/.npz tensors")
    if layout.sample_rank is not None and layout.sample_rank != 3 and not clips:  # Conv1d/Conv3d
        raise ReportError(f"{layout.layer} does not take 2D images; give the inputs as .pt/.npy/.npz tensors")


# --- labelled inputs -------------------------------------------------------------------------

def class_index(text: str, class_names: Sequence[str] | None) -> int | None:
    """A class given as an index ("3") or a name (matched exactly, then ignoring case)."""
    if text.strip().isdigit():
        return int(text)
    if class_names:
        if text in class_names:
            return list(class_names).index(text)
        lowered = [name.lower() for name in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    return None


def load_dataset(root: str | Path, preprocessing: Preprocessing, *, class_names: Sequence[str] | None = None,
                 names_given: bool = False, strict: bool = False) -> InputSet:
    """An ImageFolder-style folder: one subfolder per class, images anywhere below it.

    Classes are numbered in sorted folder order (as torchvision's ImageFolder does) and named
    after their folders, unless `class_names` is given: then every folder must be one of those
    names (or an index) and takes that index. With names from a model's metadata
    (`names_given=False`) folders that don't all match fall back to folder order.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ReportError(f"--dataset {folder}: not a folder" if folder.exists() else f"--dataset folder not found: {folder}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ReportError(f"--dataset {folder} has no class subfolders (one folder per class); "
                          "to use its files without labels, pass the folder as INPUT")
    mapped = [class_index(c.name, class_names) for c in classes] if class_names else [None]
    if class_names and all(m is not None and m < len(class_names) for m in mapped):
        indices = [int(m) for m in mapped if m is not None]
        names: list[str] | None = None
        how = "folder names matched to the given class names"
    elif class_names and names_given:
        bad = next(c.name for c, m in zip(classes, mapped) if m is None or m >= len(class_names))
        raise ReportError(f"--dataset {folder}: class folder {bad!r} is not one of the --labels names "
                          f"({', '.join(list(class_names)[:5])}, ...)")
    else:
        indices = list(range(len(classes)))
        names = [c.name for c in classes]
        how = "classes numbered in sorted folder order and named after the folders"
    paths: list[Path] = []
    labels: list[int | None] = []
    left_out = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    for class_dir, index in zip(classes, indices):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and _visible(p, class_dir))
        images = [p for p in files if p.suffix.lower() in image_suffixes()]
        if not images:
            raise ReportError(f"--dataset class folder {class_dir} holds no images")
        paths.extend(images)
        labels.extend([index] * len(images))
        left_out.extend(p for p in files if p.suffix.lower() not in image_suffixes())
    check_image_channels(preprocessing, InputLayout(3, preprocessing.channels))
    inputs = from_image_files(paths, preprocessing, labels=labels, skippable=[not strict] * len(paths))
    inputs.class_names = names
    inputs.label_source = f"the class folders of --dataset {folder}"
    inputs.notes.insert(0, f"Labelled inputs from --dataset {folder.name}: {len(paths)} images in "
                           f"{len(classes)} class folders ({how}).")
    if left_out:
        inputs.notes.append(f"{len(left_out)} file(s) in --dataset {folder.name} are not images and were not used: "
                            f"{_examples([str(p.relative_to(folder)) for p in left_out])}.")
    return inputs


def apply_label_pattern(inputs: InputSet, pattern: str, class_names: Sequence[str] | None) -> None:
    """Set each input's true class from its path: the first group of `pattern` (a regex), read
    as a class index or a class name."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ReportError(f"--label-pattern '{pattern}' is not a valid regular expression: {exc}") from exc
    labels: list[int | None] = []
    unmatched: list[str] = []
    for index, name in enumerate(inputs.names):
        path = inputs.paths[index] if index < len(inputs.paths) and inputs.paths[index] else name
        found = regex.search(Path(path).as_posix())
        text = (found.group(1) if found and regex.groups else found.group(0) if found else None)
        value = class_index(text, class_names) if text is not None else None
        if text is not None and value is None:
            raise ReportError(f"--label-pattern read {text!r} from {name}, which is neither a class index "
                              "nor a class name (pass --labels FILE)")
        if value is None:
            unmatched.append(name)
        labels.append(value)
    if len(unmatched) == len(labels):
        raise ReportError(f"--label-pattern '{pattern}' matches none of the inputs (e.g. {inputs.names[0]})")
    inputs.labels = labels
    inputs.label_source = f"--label-pattern '{pattern}'"
    note = f"True classes read from the file names with --label-pattern '{pattern}'"
    if unmatched:
        note += f"; {len(unmatched)} input(s) did not match and have no label (e.g. {unmatched[0]})"
    inputs.notes.append(note + ".")


# --- synthetic probes ------------------------------------------------------------------------

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
        notes=[f"No inputs were given: {count} synthetic probe inputs of shape {dims} were used "
               "(noise, gradient, stripes, blob; not real data, so predictions mean nothing)."],
        synthetic=True,
    )


def probe_shape(
    model: nn.Module,
    *,
    hint: tuple[int, ...] | None = None,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
) -> tuple[tuple[int, ...], str]:
    """The shape of one probe input and how it was chosen.

    `hint` (from --input-shape or the weights' metadata) is used as given. Otherwise the first
    conv gives the channels and rank, and sizes from PROBE_SIZES are tried largest first with
    one forward pass each, until the model accepts one.
    """
    if hint:
        return tuple(hint), "given"
    layout = layout_of(model)
    if layout.sample_rank is None:
        first_linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
        if first_linear is not None:
            return (int(first_linear.in_features),), f"from the first Linear layer's {first_linear.in_features} features"
        raise ReportError("no inputs given and no conv layer to infer their shape from: pass --input-shape C,H,W")
    channels = layout.channels or 3
    candidates = PROBE_SIZES.get(layout.sample_rank - 1, ())
    rejected: list[str] = []
    for size in candidates:
        shape = (channels, *size)
        problem = _try_forward(model, shape, forward_args)
        if problem is None:
            tried = f"; larger sizes were rejected ({'; '.join(rejected)})" if rejected else ""
            return shape, f"the first size the model accepted{tried}"
        rejected.append(f"{'x'.join(map(str, size))}: {problem}")
    raise ReportError(f"no inputs given and the model rejected every probe size for {layout.layer} "
                      f"({'; '.join(rejected[-2:])}); pass --input-shape")


def _try_forward(model: nn.Module, shape: tuple[int, ...], forward_args: Callable[[torch.Tensor], Any] | None) -> str | None:
    from reportgen.devices import model_device, model_dtype
    from reportgen.model_state import preserved_modes

    batch = torch.zeros((1, *shape), device=model_device(model), dtype=model_dtype(model))
    try:
        with preserved_modes(model), torch.inference_mode():
            model.eval()
            call_model(model, batch, forward_args)
    except Exception as exc:
        return one_line(exc, limit=120)
    return None


def call_model(model: nn.Module, batch: torch.Tensor, forward_args: Callable[[torch.Tensor], Any] | None) -> Any:
    """model(batch), or model(*args) / model(**kwargs) from `forward_args(batch)` for models that
    take several inputs or a dict."""
    if forward_args is None:
        return model(batch)
    args = forward_args(batch)
    if isinstance(args, dict):
        return model(**args)
    if isinstance(args, (tuple, list)):
        return model(*args)
    return model(args)
