"""Token pictures of a transformer layer, per shown input: the token-norm map and the first three
principal components of the tokens as an RGB picture.

A transformer's channels are directions in its residual stream, not features aligned with an
axis, so one channel's tile says little on its own; these two pictures look at whole tokens.
They are made for every observed layer call whose output tokens.py laid out on a 2D grid (its
`Observation.site.grid`: ViT's patch tokens with the class and other leading tokens dropped,
Swin's channels-last maps), for the first `keep_inputs` inputs, on the device:

- **token-norm map**: each token's L2 norm over its D channels, on the h x w grid, drawn exactly
  like a feature-map tile (`capture.quantise_tiles`): average-pooled to at most `tile_size` a
  side, stretched from this input's smallest norm (dark) to its largest (bright),
  level = floor((norm - min) / (max - min) * 253 + 0.5); flat (all equal, NaN or Inf): FLAT_INDEX.
- **PCA picture**: the h*w x D matrix of this input's tokens, centred (the mean token subtracted),
  in float64. Its principal components come from the eigendecomposition of the smaller Gram matrix
  (X X^T when h*w <= D, else X^T X): the SVD's squared singular values and singular vectors, at a
  third of its cost. Each token's scores on the first three components are R, G and B. A
  component's sign is arbitrary, so it is fixed: the token farthest from the mean along it (the
  largest |score|, the first in row-major order on a tie) gets a positive score, so it is drawn
  bright. Each score is scaled from its min to its max over this input's tokens to 0..1,
  average-pooled like the norm map, and level = floor(unit * 255 + 0.5). A component that does
  not exist (D or h*w below 3) or has no spread (eigenvalue <= 1e-12 x the total variance) is
  drawn as 0 in its colour. `explained`: each drawn component's eigenvalue over the total variance
  (the sum of squares of the centred tokens), which says how much of the tokens the picture shows.
  An input whose tokens hold NaN or Inf gets no PCA picture.

The state is per shown input (a union keyed by layer call and global input index), so a pass
split in shares merges exactly. 3D token grids (video Swin) get no pictures, and a note says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from reportgen.analysis import TokenPicture
from reportgen.capture import downsample, quantise_tiles
from reportgen.devices import one_cpu_thread
from reportgen.engine.collector import Collector, Observation

COMPONENTS = 3  # drawn as R, G, B
NO_SPREAD = 1e-12  # a component whose eigenvalue is at most this fraction of the total variance is not drawn
RGB_LEVELS = 255


@dataclass
class TokenPictureState:
    pictures: dict[str, dict[int, TokenPicture]] = field(default_factory=dict)  # layer call key -> input -> pictures
    volumes: set[str] = field(default_factory=set)  # layer names whose token grid is 3D (not drawn)

    def merge(self, other: TokenPictureState) -> None:
        for key, theirs in other.pictures.items():
            self.pictures.setdefault(key, {}).update(theirs)
        self.volumes |= other.volumes


def might_have_tokens(model: nn.Module, selected: Sequence[str]) -> bool:
    """Whether any selected layer can have a token layout: tokens.layout_of never gives one to a conv."""
    modules = dict(model.named_modules())
    return any(name in modules and not isinstance(modules[name], nn.modules.conv._ConvNd) for name in selected)


def principal_scores(centred: torch.Tensor, count: int = COMPONENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T, D) centred tokens -> their scores on the first `count` principal components
    (n, T, k) and the components' eigenvalues (n, k), largest first, k = min(count, T, D); signs
    as the eigendecomposition leaves them (see `fix_signs`)."""
    tokens, channels = centred.shape[1:]
    k = min(count, tokens, channels)
    if tokens <= channels:
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # ascending
        values = values.flip(-1)[:, :k].clamp_min(0.0)
        return vectors.flip(-1)[:, :, :k] * values.sqrt()[:, None, :], values
    values, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
    return centred @ vectors.flip(-1)[:, :, :k], values.flip(-1)[:, :k].clamp_min(0.0)


def fix_signs(scores: torch.Tensor) -> torch.Tensor:
    """Each component (last dim) of (n, T, k) scores flipped so that its largest-|score| token
    (the first one on a tie) is positive."""
    extreme = scores.abs().argmax(dim=1, keepdim=True)  # torch returns the first maximum
    signs = torch.sign(scores.gather(1, extreme))
    return scores * torch.where(signs == 0, torch.ones_like(signs), signs)


def draw(maps: torch.Tensor, tile_size: int) -> list[TokenPicture]:
    """The pictures of n inputs' (n, D, h, w) token maps (see the module doc). On the CPU with
    one thread: small ops, and right after a forward its OpenMP threads still spin, so LAPACK's
    own threads wait on them at every step (vit_b_16, 2 threads on a busy 2-core machine: eigh of
    a 196 x 196 Gram matrix took 2 s, against 4 ms on one thread)."""
    values = maps.detach()
    if values.device.type == "mps":  # no float64 there
        values = values.cpu()
    with one_cpu_thread(values.device.type == "cpu"):
        return _draw(values, tile_size)


def _draw(values: torch.Tensor, tile_size: int) -> list[TokenPicture]:
    values = values.to(torch.float64)
    count, channels, height, width = values.shape
    finite = torch.isfinite(values).flatten(1).all(dim=1)
    norms = torch.linalg.vector_norm(values, dim=1, keepdim=True)  # NaN or Inf stays: the map is flat
    levels, low, high, _ = quantise_tiles(norms, tile_size)
    tokens = torch.nan_to_num(values.flatten(2).transpose(1, 2), nan=0.0, posinf=0.0, neginf=0.0)  # (n, T, D)
    centred = tokens - tokens.mean(dim=1, keepdim=True)
    total = centred.square().sum(dim=(1, 2))
    scores, eigenvalues = principal_scores(centred)
    scores = fix_signs(scores)
    drawn = eigenvalues > NO_SPREAD * total[:, None]
    smallest, largest = scores.amin(dim=1, keepdim=True), scores.amax(dim=1, keepdim=True)
    span = torch.where(drawn[:, None, :], largest - smallest, torch.ones_like(largest))
    unit = torch.where(drawn[:, None, :], (scores - smallest) / span, torch.zeros_like(scores)).clamp(0.0, 1.0)
    padded = torch.zeros((count, height * width, COMPONENTS), dtype=unit.dtype, device=unit.device)
    padded[:, :, :unit.shape[2]] = unit
    pooled = downsample(padded.transpose(1, 2).reshape(count, COMPONENTS, height, width), tile_size)
    rgb = torch.floor(pooled * RGB_LEVELS + 0.5).to(torch.uint8).permute(0, 2, 3, 1)
    explained = torch.where(drawn, eigenvalues / torch.where(total > 0, total, torch.ones_like(total))[:, None],
                            torch.zeros_like(eigenvalues))
    host = {name: tensor.cpu().numpy() for name, tensor in (
        ("levels", levels[:, 0]), ("low", low[:, 0]), ("high", high[:, 0]), ("rgb", rgb),
        ("explained", explained), ("drawn", drawn.sum(dim=1)), ("finite", finite))}
    pictures = []
    for row in range(count):
        ok = bool(host["finite"][row])
        fractions = [float(f) for f in host["explained"][row]] if ok else []
        pictures.append(TokenPicture(
            grid=(height, width), channels=channels, norm=host["levels"][row],
            norm_min=float(host["low"][row]), norm_max=float(host["high"][row]),
            pca=host["rgb"][row] if ok else None,
            explained=tuple(fractions + [0.0] * (COMPONENTS - len(fractions))) if ok else (),
            components=int(host["drawn"][row]) if ok else 0,
        ))
    return pictures


class TokenPictureCollector(Collector[TokenPictureState]):
    """Token-norm maps and principal-component pictures of the shown inputs (see the module doc)."""

    observes = True

    def __init__(self, *, tile_size: int, keep_inputs: int) -> None:
        super().__init__()
        self.tile_size = tile_size
        self.keep_inputs = keep_inputs

    def empty(self) -> TokenPictureState:
        return TokenPictureState()

    def observe(self, observation: Observation) -> None:
        grid = observation.site.grid
        if not grid or self.batch is None:
            return
        if len(grid) != 2 or observation.tensor.dim() != 4:
            self.staged.volumes.add(observation.name)
            return
        offset = self.batch.start
        kept = min(observation.tensor.shape[0], self.keep_inputs - offset)
        if kept <= 0:
            return
        found = self.staged.pictures.setdefault(observation.key, {})
        for row, picture in enumerate(draw(observation.tensor[:kept], self.tile_size)):
            found[offset + row] = picture

    def result(self) -> dict[str, dict[int, TokenPicture]]:
        return {key: dict(sorted(found.items())) for key, found in sorted(self.state.pictures.items())}

    def notes(self) -> tuple[str, ...]:
        if not self.state.volumes:
            return ()
        names = ", ".join(sorted(self.state.volumes))
        return (f"Token-norm maps and principal-component pictures are drawn for 2D token grids only; "
                f"not for the 3D (time x height x width) grids of {names}.",)
