"""How an image file becomes the tensor the model sees, stated so the report can repeat it.

Channel adaptation is never silent: `adaptation_note(mode, ...)` says, for one image, what had to
change so that its channel count fits the model's first convolution (gray repeated to 3 channels,
alpha composited on white, colour reduced to luma for a 1-channel model, ...). The input stage
attaches that note to the input and summarises it for the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# PIL modes holding one channel of intensity; the 16/32-bit ones keep their precision.
GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
IMAGE_CHANNELS = (1, 3, 4)  # what an image can be turned into
DEFAULT_SOURCE = "default"  # `Preprocessing.source` when reportgen chose it: no option, no metadata
OPTION_NAMES = {"grayscale": "--grayscale", "resize": "--resize", "center_crop": "--center-crop",
                "mean": "--mean", "std": "--std"}


@dataclass(frozen=True)
class Preprocessing:
    """Transforms applied to image inputs, in order: channels, resize, center crop, scale, normalise.

    `channels` is what the model's first conv takes (1, 3 or 4; None means 3). `grayscale`
    first reduces colour to luma; with `channels=3` the gray is then repeated to 3 channels.
    `resize` is (H, W), or a single int meaning "shorter side to this many pixels" (as
    torchvision's Resize(int) does). `mean`/`std` are per channel, applied after scaling to [0, 1].
    `interpolation` is torchvision's name for the resize filter (bilinear, bicubic, nearest).
    `pil_resize`: resize and crop the 8-bit RGB or gray image with PIL before it becomes a tensor,
    as timm's eval transform does (PIL's bicubic is not torch's: up to ~20 levels apart on noise);
    16-bit images are still resized as tensors, keeping their precision.
    """

    channels: int | None = None
    resize: tuple[int, ...] | None = None
    center_crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = "preprocessing argument"
    grayscale: bool = False
    options: frozenset[str] = frozenset()  # fields a command-line option set (OPTION_NAMES' keys)
    interpolation: str = "bilinear"
    pil_resize: bool = False

    @property
    def target_channels(self) -> int:
        return self.channels or 3

    def origin(self, fields: tuple[str, ...], default: str) -> str:
        """Where a step came from: the options that set its `fields`, else this preprocessing's
        source (weights metadata, the demo, ...), else `default` (what reportgen chose)."""
        given = [OPTION_NAMES[f] for f in fields if f in self.options]
        base = default if self.source == DEFAULT_SOURCE else self.source
        if given and len(given) == len(fields):
            return " and ".join(given)
        return " and ".join(given) + f"; the rest {base}" if given else base

    def describe(self) -> tuple[str, ...]:
        """Each step with where it came from, so no step claims an option nobody gave."""
        steps: list[tuple[str, str]] = []
        target = self.target_channels
        plural = "channel" if target == 1 else "channels"
        channels = self.origin(("grayscale",), f"default: the model's first conv takes {target} {plural}"
                               if self.channels else "default: 3 channels")
        if self.grayscale:
            steps.append(("convert to grayscale (luma: 0.299 R + 0.587 G + 0.114 B)", channels))
            if target > 1:
                steps.append((f"repeat the gray channel to {target} channels",
                              self.origin((), f"default: the model's first conv takes {target} channels")))
        elif target == 1:
            steps.append(("convert to 1 channel (colour images reduced to luma)", channels))
        elif target == 3:
            steps.append(("convert to RGB (3 channels; gray repeated, alpha composited on white)", channels))
        else:
            steps.append((f"convert to {target} channels (RGBA)", channels))
        if self.resize is not None:
            resized = self.origin(("resize",), DEFAULT_SOURCE)
            how = f"{self.interpolation}, {'PIL' if self.pil_resize else 'antialiased'}"
            if len(self.resize) == 1:
                steps.append((f"resize shorter side to {self.resize[0]} px ({how})", resized))
            else:
                steps.append((f"resize to {self.resize[0]}x{self.resize[1]} ({how})", resized))
        if self.center_crop is not None:
            steps.append((f"center crop {self.center_crop[0]}x{self.center_crop[1]}",
                          self.origin(("center_crop",), DEFAULT_SOURCE)))
        steps.append(("scale pixels to [0, 1] (8-bit / 255, 16-bit / 65535)",
                      self.origin((), "default for image files")))
        if self.mean is not None and self.std is not None:
            mean = ", ".join(f"{m:g}" for m in self.mean)
            std = ", ".join(f"{s:g}" for s in self.std)
            steps.append((f"normalise: (x - [{mean}]) / [{std}]", self.origin(("mean", "std"), DEFAULT_SOURCE)))
        return tuple(f"{step} ({origin})" for step, origin in steps)

    def adaptation_note(self, mode: str, has_transparency: bool = False) -> str | None:
        """What happens to the channels of an image with PIL `mode`; None if nothing changes."""
        return adaptation_note(mode, self.target_channels, grayscale=self.grayscale,
                               has_transparency=has_transparency)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float32 (C, H, W) tensor, normalised."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        mode = InterpolationMode(self.interpolation)
        if (self.pil_resize and not self.grayscale and self.target_channels in (1, 3)
                and image.mode not in HIGH_DEPTH_MODES):
            picture = convert_channels(image, self.target_channels)
            if self.resize is not None:
                picture = TF.resize(picture, list(self.resize), interpolation=mode)
            if self.center_crop is not None:
                picture = TF.center_crop(picture, list(self.center_crop))
            return self.normalise(pil_to_unit_tensor(picture))
        tensor = image_to_unit_tensor(image, self.target_channels, grayscale=self.grayscale)
        if self.resize is not None:
            tensor = TF.resize(tensor, list(self.resize), interpolation=mode, antialias=True)
        if self.center_crop is not None:
            tensor = TF.center_crop(tensor, list(self.center_crop))
        return self.normalise(tensor)

    def normalise(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return tensor
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        mean = torch.tensor(self.mean, dtype=tensor.dtype).reshape(shape)
        std = torch.tensor(self.std, dtype=tensor.dtype).reshape(shape)
        return (tensor - mean) / std

    def denormalise(self, tensor: torch.Tensor) -> torch.Tensor:
        """Undo `normalise` on a (C, H, W) or (N, C, H, W) tensor, for thumbnails."""
        if self.mean is None or self.std is None:
            return tensor
        channel_dim = 1 if tensor.dim() == 4 else 0
        shape = [1] * tensor.dim()
        shape[channel_dim] = -1
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).reshape(shape)
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device).reshape(shape)
        return tensor * std + mean


def _is_gray(mode: str) -> bool:
    return mode in GRAY_MODES or mode in ("LA", "La")


def adaptation_note(mode: str, channels: int, *, grayscale: bool = False,
                    has_transparency: bool = False) -> str | None:
    """One sentence on how an image of PIL `mode` is fitted to `channels`; None if it already fits."""
    parts = []
    alpha = mode in ALPHA_MODES or (mode == "P" and has_transparency)
    if mode == "P":
        parts.append("palette image expanded")
    elif mode == "CMYK":
        parts.append("CMYK converted to RGB")
    elif mode in ("YCbCr", "LAB", "HSV"):
        parts.append(f"{mode} converted to RGB")
    if mode in HIGH_DEPTH_MODES:
        parts.append(f"{'16-bit' if mode.startswith('I;16') else mode + '-mode'} grayscale kept at full precision")
    if alpha and not (channels == 4 and not grayscale):
        parts.append("alpha channel composited on white and dropped")
    gray = _is_gray(mode)
    if grayscale and not gray:
        parts.append("colour reduced to gray (luma)")
        gray = True
    if channels == 1 and not gray:
        parts.append("colour reduced to 1 gray channel (luma) for a 1-channel model")
    elif channels > 1 and gray:
        parts.append(f"gray channel repeated to {channels} channels")
    if channels == 4 and not alpha and not grayscale:
        parts.append("opaque alpha channel added")
    return "; ".join(parts) if parts else None


def _gray_unit(image: Image.Image) -> np.ndarray:
    """One channel in [0, 1], float32; 16/32-bit modes keep their precision."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        # 16-bit PNGs and TIFFs usually arrive as I;16; a 32-bit "I" image is scaled by its own
        # type range only when it exceeds 8 bits.
        peak = 65535.0 if array.max(initial=0.0) > 255 else 255.0
        return array / peak
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        image = _flatten_alpha(image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _flatten_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def image_to_unit_tensor(image: Image.Image, channels: int = 3, *, grayscale: bool = False) -> torch.Tensor:
    """(channels, H, W) float32 in [0, 1], adapted as `adaptation_note` describes."""
    mode = image.mode
    if grayscale or channels == 1 or _is_gray(mode):
        array = _gray_unit(image)[None]
        if channels > 1:
            array = np.repeat(array, 3, axis=0)
            if channels == 4:
                array = np.concatenate([array, np.ones_like(array[:1])])
    elif channels == 4:
        array = np.asarray(image.convert("RGBA"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    else:
        if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
            image = _flatten_alpha(image)
        array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
    """Palette, RGBA, 16-bit and CMYK images to plain L or RGB (8 bits); kept for callers that
    want a PIL image. `Preprocessing.to_tensor` keeps 16-bit precision instead."""
    tensor = image_to_unit_tensor(image, 1 if channels == 1 else 3)
    array = (tensor.numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array[0]) if channels == 1 else Image.fromarray(array.transpose(1, 2, 0))


def pil_to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1] without changing the channel count (gray stays 1 channel)."""
    channels = 1 if _is_gray(image.mode) else 4 if image.mode in ALPHA_MODES else 3
    return image_to_unit_tensor(image, channels)


def seen_image(sample: torch.Tensor, preprocessing: Preprocessing | None) -> torch.Tensor | None:
    """(C, H, W) float in [0, 1], C in (1, 3): the input as the model saw it, de-normalised.

    Images whose de-normalised values leave [0, 1] (no known normalisation) are stretched by
    their own min and max; other channel counts are averaged to one. None for non-2D inputs.
    """
    if sample.dim() != 3 or not sample.is_floating_point():
        return None
    return seen_values(sample, preprocessing)[0]


def seen_values(sample: torch.Tensor,
                preprocessing: Preprocessing | None) -> tuple[torch.Tensor, tuple[float, float] | None]:
    """(C, *rest) float -> the values in [0, 1] as the model saw them, and the (min, max) they were
    stretched from when the de-normalised values leave [0, 1] (else None). Channel counts other
    than 1 and 3 are averaged to one; NaN becomes 0, +Inf 1 and -Inf 0. `rest` may be any shape
    (a clip's frames are de-normalised and stretched together, one scale for all of them)."""
    image = sample.detach().float().cpu()
    channels = image.shape[0]
    means = preprocessing.mean if preprocessing is not None else None
    if preprocessing is not None and (means is None or channels == 1 or len(means) in (1, channels)):
        image = preprocessing.denormalise(image.reshape(channels, -1, image.shape[-1])).reshape(-1, *image.shape[1:])
    if image.shape[0] not in (1, 3):
        image = image.mean(dim=0, keepdim=True)
    image = torch.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:  # not a [0, 1] image: stretch its own range
        return ((image - low) / (high - low) if high > low else torch.zeros_like(image)), (low, high)
    return image, None
