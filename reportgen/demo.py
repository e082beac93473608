"""The demo network behind ``reportgen demo``: a procedural dataset, a small CNN and its checkpoint.

The demo has to show the report at its best with no downloads, so the data is drawn from code
rather than fetched: eight classes of 32x32 RGB images whose labels depend on orientation
(four stripe directions, a checkerboard) and on colour and shape (a red disc, a green square, a
blue triangle, half of them beside a grey shape of another kind). Colours, phases, periods,
tilts, positions, sizes and noise are random, so the network has to learn oriented edge
detectors and colour filters in its first layer -- exactly what the filter section of a report
is meant to reveal.

Normalisation is done by the caller, not inside the model: images from this module are in
[0, 1], and the model expects ``(image - DEMO_MEAN) / DEMO_STD`` per channel, the same contract
as torchvision's pretrained classifiers. The checkpoint (``reportgen/data/demo_model.pt``) is
produced by ``examples/train_demo_model.py``.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

__all__ = [
    "CLASS_NAMES",
    "DEMO_MEAN",
    "DEMO_STD",
    "IMAGE_SIZE",
    "build_demo_model",
    "demo_samples",
    "load_demo_model",
    "make_dataset",
    "make_sample",
]

CLASS_NAMES: tuple[str, ...] = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "anti-diagonal stripes",
    "checkerboard",
    "red disc",
    "green square",
    "blue triangle",
)
IMAGE_SIZE = 32
DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_CHECKPOINT_NAME = "demo_model.pt"

# Stripe directions in degrees, measured as the direction the intensity varies along, with image
# y pointing down: "diagonal" stripes run like "/" so they vary along (1, 1).
_STRIPE_ANGLES = {
    "horizontal stripes": 90.0,
    "vertical stripes": 0.0,
    "diagonal stripes": 45.0,
    "anti-diagonal stripes": -45.0,
}
# Small random tilts keep the orientation classes from being pixel-exact templates while staying
# well clear of the neighbouring class, 45 degrees away.
_MAX_TILT_DEGREES = 10.0
_MAX_SHAPE_ROTATION_DEGREES = 20.0

# The coloured-shape classes: which shape, and which channel dominates its colour.
_SHAPE_CLASSES = {
    "red disc": ("disc", 0),
    "green square": ("square", 1),
    "blue triangle": ("triangle", 2),
}
# Half of the coloured-shape images also hold a grey shape of another kind, so a class cannot be
# told from shape alone: the network has to look at colour too.
_DISTRACTOR_PROBABILITY = 0.5


# --------------------------------------------------------------------------------------------
# Procedural images
# --------------------------------------------------------------------------------------------


def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x to the right, y downwards), each IMAGE_SIZE x IMAGE_SIZE."""
    coords = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
    x, y = np.meshgrid(coords, coords, indexing="xy")
    return x, y


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours far enough apart that the pattern between them stays visible."""
    while True:
        first = rng.uniform(0.0, 1.0, size=3)
        second = rng.uniform(0.0, 1.0, size=3)
        if np.abs(first - second).sum() >= 0.6:
            return first, second


def _blend(mask: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Mix a colour or image (background) with a colour (foreground) through a [0, 1] HxW mask."""
    weight = mask[..., None]
    return background * (1.0 - weight) + foreground * weight


def _soft_square_wave(phase: np.ndarray, sharpness: float) -> np.ndarray:
    """A sine squashed towards a square wave, mapped to [0, 1]; sharpness 1 is a pure sine."""
    return 0.5 + 0.5 * np.clip(np.sin(phase) * sharpness, -1.0, 1.0)


def _stripes(angle_degrees: float, rng: np.random.Generator) -> np.ndarray:
    x, y = _pixel_grid()
    angle = math.radians(angle_degrees + rng.uniform(-_MAX_TILT_DEGREES, _MAX_TILT_DEGREES))
    distance = x * math.cos(angle) + y * math.sin(angle)
    period = rng.uniform(4.0, 10.0)
    phase = 2.0 * math.pi * distance / period + rng.uniform(0.0, 2.0 * math.pi)
    mask = _soft_square_wave(phase, sharpness=rng.uniform(1.0, 4.0))
    first, second = _contrasting_colours(rng)
    return _blend(mask, first, second)


def _checkerboard(rng: np.random.Generator) -> np.ndarray:
    x, y = _pixel_grid()
    cell = rng.uniform(3.0, 7.0)
    across = np.sin(math.pi * x / cell + rng.uniform(0.0, 2.0 * math.pi))
    down = np.sin(math.pi * y / cell + rng.uniform(0.0, 2.0 * math.pi))
    mask = 0.5 + 0.5 * np.clip(across * down * rng.uniform(2.0, 6.0), -1.0, 1.0)
    first, second = _contrasting_colours(rng)
    return _blend(mask, first, second)


def _shape_colour(channel: int, rng: np.random.Generator) -> np.ndarray:
    """A saturated colour whose dominant channel is `channel`, e.g. a red of varying shade."""
    colour = rng.uniform(0.0, 0.35, size=3)
    colour[channel] = rng.uniform(0.6, 1.0)
    return colour


def _shape_background(rng: np.random.Generator) -> np.ndarray:
    """A grey with a faint random tint, so colour -- not brightness -- names the shape."""
    return np.clip(rng.uniform(0.1, 0.9) + rng.uniform(-0.08, 0.08, size=3), 0.0, 1.0)


def _distractor_colour(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey clearly brighter or darker than the background, so the distractor is visible."""
    level = float(background.mean())
    offset = rng.uniform(0.25, 0.45)
    brighter, darker = level + offset, level - offset
    # offset < 0.5, so at least one of the two stays inside [0, 1].
    if brighter > 1.0:
        grey = darker
    elif darker < 0.0:
        grey = brighter
    else:
        grey = brighter if rng.random() < 0.5 else darker
    return np.full(3, grey)


def _signed_distance_to_shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Distance in pixels inside (positive) or outside (negative) a randomly placed shape."""
    x, y = _pixel_grid()
    if kind == "disc":
        radius = rng.uniform(4.0, 10.0)
        cx, cy = rng.uniform(radius + 1.0, IMAGE_SIZE - radius - 1.0, size=2)
        return radius - np.hypot(x - cx, y - cy)

    rotation = math.radians(rng.uniform(-_MAX_SHAPE_ROTATION_DEGREES, _MAX_SHAPE_ROTATION_DEGREES))
    if kind == "square":
        half_side = rng.uniform(4.0, 9.0)
        # A rotated square's corners reach half_side * sqrt(2) from its centre.
        reach = half_side * math.sqrt(2.0)
        cx, cy = rng.uniform(reach + 1.0, IMAGE_SIZE - reach - 1.0, size=2)
        u = (x - cx) * math.cos(rotation) + (y - cy) * math.sin(rotation)
        v = -(x - cx) * math.sin(rotation) + (y - cy) * math.cos(rotation)
        return half_side - np.maximum(np.abs(u), np.abs(v))

    if kind == "triangle":
        # Equilateral triangle: the intersection of three half-planes at `inradius` from the
        # centre, their outward normals 120 degrees apart (one pointing down: apex up).
        circumradius = rng.uniform(6.5, 13.0)
        inradius = circumradius / 2.0
        cx, cy = rng.uniform(circumradius + 1.0, IMAGE_SIZE - circumradius - 1.0, size=2)
        distances = []
        for k in range(3):
            normal = math.pi / 2.0 + rotation + k * 2.0 * math.pi / 3.0
            along = (x - cx) * math.cos(normal) + (y - cy) * math.sin(normal)
            distances.append(inradius - along)
        return np.minimum.reduce(distances)

    raise ValueError(f"unknown shape kind {kind!r}")


def _shape_mask(kind: str, rng: np.random.Generator) -> np.ndarray:
    # Clipping the signed distance around the boundary gives a one-pixel anti-aliased edge.
    return np.clip(_signed_distance_to_shape(kind, rng) + 0.5, 0.0, 1.0)


def _coloured_shape(name: str, rng: np.random.Generator) -> np.ndarray:
    kind, channel = _SHAPE_CLASSES[name]
    background = _shape_background(rng)
    image = np.broadcast_to(background, (IMAGE_SIZE, IMAGE_SIZE, 3))
    if rng.random() < _DISTRACTOR_PROBABILITY:
        other_kinds = sorted(k for k, _ in _SHAPE_CLASSES.values() if k != kind)
        other = other_kinds[int(rng.integers(len(other_kinds)))]
        image = _blend(_shape_mask(other, rng), image, _distractor_colour(background, rng))
    # The class's own shape is drawn last, so it is never hidden behind the distractor.
    return _blend(_shape_mask(kind, rng), image, _shape_colour(channel, rng))


def make_sample(class_index: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image of class ``CLASS_NAMES[class_index]``.

    Returns a float32 array of shape (IMAGE_SIZE, IMAGE_SIZE, 3) with values in [0, 1]. All
    randomness comes from ``rng``, so a seeded generator gives the same image every time.
    """
    if not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in [0, {len(CLASS_NAMES)}), got {class_index}")
    name = CLASS_NAMES[class_index]
    if name in _STRIPE_ANGLES:
        image = _stripes(_STRIPE_ANGLES[name], rng)
    elif name == "checkerboard":
        image = _checkerboard(rng)
    else:
        image = _coloured_shape(name, rng)
    noise = rng.normal(0.0, rng.uniform(0.02, 0.12), size=image.shape)
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


def make_dataset(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_per_class`` images of every class, interleaved (class 0, 1, ..., 0, 1, ...).

    Returns images as float32 (N, 3, IMAGE_SIZE, IMAGE_SIZE) in [0, 1] -- not normalised -- and
    int64 labels of shape (N,). The same seed always gives the same tensors.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASS_NAMES), dtype=np.int64), n_per_class)
    images = np.stack([make_sample(int(label), rng) for label in labels])
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels),
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def demo_samples(count: int = 8, seed: int = 2024) -> tuple[torch.Tensor, list[int], list[str]]:
    """The images a demo report shows: ``count`` samples cycling through the classes.

    With ``count >= len(CLASS_NAMES)`` every class appears. Returns float32 images
    (count, 3, IMAGE_SIZE, IMAGE_SIZE) in [0, 1] (normalise with DEMO_MEAN/DEMO_STD before the
    model), their labels, and stable names such as ``"sample-05-red-disc"``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    labels = [index % len(CLASS_NAMES) for index in range(count)]
    images = np.stack([make_sample(label, rng) for label in labels])
    names = [
        f"sample-{index:02d}-{_slug(CLASS_NAMES[label])}" for index, label in enumerate(labels)
    ]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, names


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def _conv_block(
    index: int, in_channels: int, out_channels: int, kernel_size: int
) -> list[tuple[str, nn.Module]]:
    """conv -> batch norm -> ReLU, named convN/bnN/reluN so report sections read naturally."""
    return [
        (
            f"conv{index}",
            # No bias: the batch norm that follows has its own shift.
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        ),
        (f"bn{index}", nn.BatchNorm2d(out_channels)),
        (f"relu{index}", nn.ReLU(inplace=True)),
    ]


def build_demo_model() -> nn.Module:
    """The untrained demo CNN (about 25k parameters).

    ``features``: conv1 (3->16, 5x5) -> bn1 -> relu1 -> pool1, conv2 (16->32, 3x3) -> bn2 ->
    relu2 -> pool2, conv3 (32->64, 3x3) -> bn3 -> relu3; then ``avgpool`` (global average),
    ``flatten`` and ``classifier`` (64 -> len(CLASS_NAMES)). The 5x5 first layer gives filters
    large enough to show as readable edge and colour detectors. Inputs must already be
    normalised with DEMO_MEAN/DEMO_STD.
    """
    features = nn.Sequential(
        OrderedDict(
            [
                *_conv_block(1, 3, 16, kernel_size=5),
                ("pool1", nn.MaxPool2d(2)),
                *_conv_block(2, 16, 32, kernel_size=3),
                ("pool2", nn.MaxPool2d(2)),
                *_conv_block(3, 32, 64, kernel_size=3),
            ]
        )
    )
    return nn.Sequential(
        OrderedDict(
            [
                ("features", features),
                ("avgpool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("classifier", nn.Linear(64, len(CLASS_NAMES))),
            ]
        )
    )


def load_demo_model(checkpoint_name: str = _CHECKPOINT_NAME) -> nn.Module:
    """The trained demo CNN from the shipped checkpoint, in eval mode on the CPU
    (`checkpoint_name`: one of DEMO_RUN, the weights at another point of the same training)."""
    model = build_demo_model()
    checkpoint = importlib.resources.files("reportgen.data") / checkpoint_name
    with importlib.resources.as_file(checkpoint) as path:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# The demo model's weights after epochs 1, 6 and 12 of its training (examples/train_demo_model.py
# --checkpoints): the last is the shipped demo model itself. `reportgen demo --compare` shows them.
DEMO_RUN: tuple[tuple[str, str], ...] = (
    ("epoch 1", "demo_epoch01.pt"), ("epoch 6", "demo_epoch06.pt"), ("epoch 12", _CHECKPOINT_NAME))
