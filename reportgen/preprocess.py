"""How an image file becomes the tensor the model sees, stated so the report can repeat it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """Transforms applied to image inputs, in order: channels, resize, center crop, scale, normalise.

    `resize` is (H, W), or a single int meaning "shorter side to this many pixels" (as
    torchvision's Resize(int) does). `mean`/`std` are per channel, applied after scaling to [0, 1].
    """

    channels: int | None = None
    resize: tuple[int, ...] | None = None
    center_crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = "options"

    def describe(self) -> tuple[str, ...]:
        steps = []
        if self.channels == 1:
            steps.append("convert to grayscale (1 channel)")
        elif self.channels == 3:
            steps.append("convert to RGB (3 channels)")
        if self.resize is not None:
            if len(self.resize) == 1:
                steps.append(f"resize shorter side to {self.resize[0]} px (bilinear, antialiased)")
            else:
                steps.append(f"resize to {self.resize[0]}x{self.resize[1]} (bilinear, antialiased)")
        if self.center_crop is not None:
            steps.append(f"center crop {self.center_crop[0]}x{self.center_crop[1]}")
        steps.append("scale pixels to [0, 1]")
        if self.mean is not None and self.std is not None:
            mean = ", ".join(f"{m:g}" for m in self.mean)
            std = ", ".join(f"{s:g}" for s in self.std)
            steps.append(f"normalise: (x - [{mean}]) / [{std}]")
        return tuple(f"{step} ({self.source})" for step in steps)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float32 (C, H, W) tensor, normalised."""
        from torchvision.transforms import functional as TF

        image = convert_channels(image, self.channels or 3)
        tensor = pil_to_unit_tensor(image)
        if self.resize is not None:
            size = list(self.resize)
            tensor = TF.resize(tensor, size, antialias=True)
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


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
    """Palette, RGBA, 16-bit and CMYK images to plain L or RGB; 16-bit keeps its precision later."""
    if channels == 1:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return image
        return image.convert("L")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit grayscale: scale to 8 bits before repeating into RGB.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def pil_to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]; 16-bit grayscale keeps its full range."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max() > 255 else 255.0
        array = array / peak
    else:
        array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
