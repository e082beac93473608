"""Transformer outputs as feature maps: token sequences and channels-last maps on their grid.

A conv's output is (N, C, H, W). A transformer block's is not: ViT's is a token sequence
(N, T, D) whose T tokens are the patches of an h x w grid in row-major order, often after a
class token (T = 1 + h * w); torchvision's Swin keeps (N, H, W, C) (channels last) and its
video Swin (N, T, H, W, C). `layout_of` recognises both from the module and the output's shape,
and `TokenLayout.maps` turns the output into the (N, C, H, W) (or (N, C, T, H, W)) maps every
collector already reads, so statistics, tiles, top-k and alerts need nothing of their own.

What is recognised, and only for modules that are not convolutions:
- a 3D output (N, T, D) whose D is the feature size of a norm, linear layer or attention inside
  the module (or the module itself), and whose T is a square of side >= 2 after at most
  `MAX_PREFIX` leading tokens (the fewest that make it square): those leading tokens (a class
  token, distillation or register tokens) belong to no patch and are dropped;
- an output of 4 or 5 dims whose last dim is such a feature size and whose dim 1 is not (the
  module keeps channels last): the last dim is moved to dim 1.
Anything else is left as it is. The channels of a transformer are directions in its residual
stream, not features aligned with an axis, and the page says so (`describe`).

`transformer_blocks` names the blocks the default layer selection adds next to the convs: each
module in a list (nn.Sequential, nn.ModuleList) that holds an attention module (nn.MultiheadAttention
or any module whose type name says attention), the innermost one above each attention; a block
that holds another is left to its inner ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reportgen.geometry import Geometry, unknown

MAX_PREFIX = 8  # leading non-patch tokens a sequence may have (class, distillation, register tokens)
CHANNELS_NOTE = ("a transformer's channels are directions in its residual stream, not features aligned with "
                 "an axis, so one channel's map is a projection, not a detector")
BLOCK_OUTPUT = f"the output of a transformer block, already channels first; {CHANNELS_NOTE}"
# attributes of modules that attend within windows or partitions (torchvision Swin, Swin3D, MaxViT)
WINDOW_ATTRIBUTES = ("window_size", "shift_size", "partition_size", "partition_type")
_ATTENTION = re.compile(r"attention", re.IGNORECASE)


@dataclass(frozen=True)
class TokenLayout:
    """How one layer's output becomes maps: `kind` "tokens" ((N, T, D) -> (N, D, h, w) with the
    first `prefix` tokens dropped) or "channels_last" ((N, ..., C) -> (N, C, ...))."""

    kind: str
    grid: tuple[int, ...]
    prefix: int = 0
    channels: int = 0

    def maps(self, output: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            height, width = self.grid
            patches = output[:, self.prefix:, :]
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], height, width)
        return output.movedim(-1, 1)

    def describe(self, shape: Sequence[int], mixing: str = "") -> str:
        """How the maps were made, what their cells see (`mixing`: see `mixing_before`) and what
        their channels are, in words."""
        grid = "x".join(str(d) for d in self.grid)
        if self.kind == "tokens":
            tokens = int(shape[1])
            dropped = ""
            if self.prefix == 1:
                dropped = " after dropping the first token (a class token: it belongs to no patch)"
            elif self.prefix:
                dropped = (f" after dropping the first {self.prefix} tokens (class, distillation or register "
                           "tokens: they belong to no patch)")
            made = (f"its {tokens} tokens of {self.channels} channels laid out row by row on a {grid} grid"
                    f"{dropped}")
        else:
            made = f"its channels-last ({', '.join(str(int(d)) for d in shape[1:])}) output moved to {self.channels} maps of {grid}"
        return f"the layer output, {made}; {SEES[mixing]}; {CHANNELS_NOTE}"



def feature_sizes(module: nn.Module) -> set[int]:
    """The feature sizes (last-dim widths) of the norms, linear layers and attention in `module`."""
    sizes: set[int] = set()
    for inner in module.modules():
        if isinstance(inner, nn.LayerNorm) and inner.normalized_shape:
            sizes.add(int(inner.normalized_shape[-1]))
        elif isinstance(inner, nn.Linear):
            sizes.add(int(inner.out_features))
        elif isinstance(inner, nn.MultiheadAttention):
            sizes.add(int(inner.embed_dim))
    return sizes


def is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or bool(_ATTENTION.search(type(module).__name__))


def mixing_before(model: nn.Module, name: str) -> str:
    """What mixes tokens up to the output of module `name`: "global" when an attention over all
    tokens is defined before it or inside it (definition order stands for run order, as in
    every transformer we know), else "window" when only window attention is (a module on the
    way down to it has one of `WINDOW_ATTRIBUTES`: Swin's window_size, MaxViT's partition_type), else ""
    (each token is its own patch)."""
    found = ""
    inside = False
    windowed: list[str] = []  # names of modules that declare a window
    for current, module in model.named_modules():
        if inside and not current.startswith(f"{name}."):
            break
        if current == name:
            inside = True
        if any(hasattr(module, attr) for attr in WINDOW_ATTRIBUTES):
            windowed.append(current)
        if current and is_attention(module):
            window = any(current == w or current.startswith(f"{w}.") for w in windowed)
            if not window:
                return "global"
            found = "window"
    return found


def token_geometry(grid: Sequence[int], mixing: str, input_spatial: Sequence[int]) -> Geometry:
    """Where the cells of a token grid look in an input of `input_spatial` pixels: with no
    attention before them, each cell is its patch (stride = receptive field = input / grid);
    after global attention each cell sees the whole input (the field of a window as wide as the
    grid centred on any cell: 2 * size - stride, starting (cells - 1) * stride before pixel 0);
    window attention widens the field block by block, which is not modelled."""
    if len(grid) != len(input_spatial):
        return unknown(f"its {len(grid)}D token grid does not match the {len(input_spatial)}D input")
    if any(size % cells for size, cells in zip(input_spatial, grid)):
        return unknown(f"its {'x'.join(map(str, grid))} token grid does not divide the "
                       f"{'x'.join(map(str, input_spatial))} input into equal patches")
    stride = tuple(int(size) // int(cells) for size, cells in zip(input_spatial, grid))
    if mixing == "window":
        return unknown("window attention (as in Swin) widens each cell's window block by block, which is not "
                       "modelled")
    if mixing == "global":
        return Geometry(tuple(2 * int(size) - s for size, s in zip(input_spatial, stride)), stride,
                        tuple(-(int(cells) - 1) * s for cells, s in zip(grid, stride)), whole_input=True)
    return Geometry(stride, stride, (0,) * len(grid))


def square_grid(tokens: int) -> tuple[int, tuple[int, int]] | None:
    """(leading tokens, (side, side)): the fewest leading tokens (at most MAX_PREFIX) after which
    `tokens` is a square of side >= 2; None when there is none."""
    for prefix in range(min(MAX_PREFIX, tokens) + 1):
        side = math.isqrt(tokens - prefix)
        if side >= 2 and side * side == tokens - prefix:
            return prefix, (side, side)
    return None


def layout_of(module: nn.Module, shape: Sequence[int]) -> TokenLayout | None:
    """The layout of `module`'s output of `shape` (batch first), or None: a map already or unknown."""
    if isinstance(module, nn.modules.conv._ConvNd) or len(shape) < 3:
        return None
    sizes = feature_sizes(module)
    last = int(shape[-1])
    if last not in sizes:
        return None
    if len(shape) == 3:
        found = square_grid(int(shape[1]))
        return TokenLayout("tokens", found[1], found[0], last) if found is not None else None
    if len(shape) in (4, 5) and int(shape[1]) != last and int(shape[1]) not in sizes:
        return TokenLayout("channels_last", tuple(int(d) for d in shape[1:-1]), 0, last)
    return None


SEES = {
    "global": "attention over all tokens ran before, so each cell can see the whole input",
    "window": "window attention ran before, so each cell sees its patch and the windows around it",
    "": "no attention ran before, so each cell sees its own patch",
}


def transformer_blocks(model: nn.Module) -> list[str]:
    """The blocks of every transformer encoder in `model`, in definition order (see the module doc)."""
    parents: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        for child_name, _child in module.named_children():
            parents[f"{name}.{child_name}" if name else child_name] = module
    blocks: dict[str, None] = {}
    for name, module in model.named_modules():
        if not name or not is_attention(module):
            continue
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # proper ancestors, innermost first
            ancestor = ".".join(parts[:cut])
            if isinstance(parents.get(ancestor), (nn.Sequential, nn.ModuleList)):
                blocks[ancestor] = None
                break
    # a block holding another block (MaxViT's layer around its window and grid attention) would
    # be drawn twice over: its output is its last inner block's; the inner ones are kept
    inner = [name for name in blocks if not any(other.startswith(f"{name}.") for other in blocks)]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(inner, key=order.__getitem__)
