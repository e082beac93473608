"""Linear CKA over minibatches, with the unbiased HSIC of Nguyen, Raghu & Kornblith (2021).

For one batch of n >= 4 inputs, X (n, p) and Y (n, q) are two layers' features (each input's
map flattened). K = X X^T and L = Y Y^T are their linear Gram matrices with the diagonal set to
0 (K~, L~), and

    HSIC_1(K, L) = 1 / (n (n - 3)) * [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                                       - 2 / (n - 2) * 1^T K~ L~ 1 ]

(Song et al. 2012; eq. 3 of Nguyen et al. 2021), an unbiased estimator of HSIC: its mean over
draws of independent features is 0, where the usual (biased) estimator tr(K H L H) / (n - 1)^2
is well above 0 when features outnumber inputs. Over the batches b of a pass,

    CKA(K, L) = S_KL / sqrt(S_KK * S_LL),  S_KL = sum_b HSIC_1(K_b, L_b)  (float64),

so memory is a few numbers per layer pair whatever the number of inputs, and two shares of a
pass merge by adding their sums (`CkaSums.merge`). Batches of fewer than 4 inputs have no
unbiased estimate: they are left out and counted (`inputs_skipped`). The estimate depends on the
batch size (it is a mean over batches, not the full-data CKA): runs with other batch sizes agree
to within the spread of the per-batch estimates, and reports state the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

MIN_BATCH = 4  # HSIC_1 divides by n (n - 3)
ESTIMATOR = "minibatch linear CKA, unbiased HSIC_1 (Nguyen, Raghu & Kornblith 2021)"


CHUNK = 1 << 20  # elements of a float64 temporary: float32 features are widened a slice at a time


def gram(features: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> the (n, n) float64 linear Gram matrix of the flattened rows.

    Summed in float64 over slices of at most CHUNK elements, so a large layer's features are
    never copied whole to float64 (a transient that would be twice the layer's output)."""
    rows = features.detach().reshape(features.shape[0], -1)
    n, width = rows.shape
    if rows.dtype == torch.float64 or n * width <= CHUNK:
        wide = rows.double()
        return wide @ wide.T
    result = torch.zeros((n, n), dtype=torch.float64, device=rows.device)
    step = max(1, CHUNK // max(n, 1))
    for start in range(0, width, step):
        part = rows[:, start:start + step].double()
        result.addmm_(part, part.T)
    return result


def _zero_diagonal(grams: torch.Tensor) -> torch.Tensor:
    n = grams.shape[-1]
    return grams * (1 - torch.eye(n, dtype=grams.dtype, device=grams.device))


def hsic1(grams_a: torch.Tensor, grams_b: torch.Tensor, *, diagonal: bool = False) -> torch.Tensor:
    """HSIC_1 of every Gram matrix in `grams_a` (A, n, n) with every one in `grams_b` (B, n, n):
    an (A, B) float64 tensor; with `diagonal` (A == B), only matching pairs: (A,)."""
    n = grams_a.shape[-1]
    if n < MIN_BATCH:
        raise ValueError(f"HSIC_1 needs at least {MIN_BATCH} inputs per batch, got {n}")
    k, m = _zero_diagonal(grams_a.double()), _zero_diagonal(grams_b.double())  # K~, L~
    k_rows, l_rows = k.sum(dim=2), m.sum(dim=2)  # K~ 1, L~ 1
    k_sum, l_sum = k_rows.sum(dim=1), l_rows.sum(dim=1)
    # K~ and L~ are symmetric: tr(K~ L~) = sum_ij K~_ij L~_ij and 1^T K~ L~ 1 = (K~ 1) . (L~ 1)
    if diagonal:
        trace = (k * m).sum(dim=(1, 2))
        cross = (k_rows * l_rows).sum(dim=1)
        sums = k_sum * l_sum
    else:
        trace = torch.einsum("aij,bij->ab", k, m)
        cross = k_rows @ l_rows.T
        sums = k_sum[:, None] * l_sum[None, :]
    return (trace + sums / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def hsic0(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """The usual biased HSIC, tr(K H L H) / (n - 1)^2 (H centres): for comparison only."""
    n = gram_a.shape[0]
    centre = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(gram_a @ centre @ gram_b @ centre) / (n - 1) ** 2)


def biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA with the biased HSIC over all rows at once (what many libraries compute)."""
    k, m = x @ x.T, y @ y.T
    return hsic0(k, m) / float(np.sqrt(hsic0(k, k) * hsic0(m, m)))


@dataclass
class CkaSums:
    """The running sums of one set of layer pairs: rows (model A's layers) x cols (B's); with
    `diagonal`, row i is paired with col i only (a layer with its own counterpart)."""

    rows: int
    cols: int
    diagonal: bool = False
    kl: np.ndarray = field(default=None)  # type: ignore[assignment]  # (rows, cols), or (rows,) diagonal
    kk: np.ndarray = field(default=None)  # type: ignore[assignment]  # (rows,)
    ll: np.ndarray = field(default=None)  # type: ignore[assignment]  # (cols,)
    batches: int = 0
    inputs_used: int = 0
    inputs_skipped: int = 0  # in batches of fewer than MIN_BATCH inputs
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch size -> batches of it

    def __post_init__(self) -> None:
        if self.diagonal and self.rows != self.cols:
            raise ValueError("a diagonal CKA pairs row i with col i: rows and cols must match")
        if self.kl is None:
            self.kl = np.zeros(self.rows if self.diagonal else (self.rows, self.cols))
        if self.kk is None:
            self.kk = np.zeros(self.rows)
        if self.ll is None:
            self.ll = np.zeros(self.cols)

    def update(self, grams_a: torch.Tensor, grams_b: torch.Tensor) -> None:
        """One batch: `grams_a` (rows, n, n) and `grams_b` (cols, n, n), Gram matrices of the
        same n inputs."""
        n = grams_a.shape[-1]
        if n < MIN_BATCH:
            self.inputs_skipped += n
            return
        cross = hsic1(grams_a, grams_b, diagonal=self.diagonal)
        own_a = hsic1(grams_a, grams_a, diagonal=True)
        own_b = hsic1(grams_b, grams_b, diagonal=True)
        self.kl = self.kl + cross.cpu().numpy()
        self.kk = self.kk + own_a.cpu().numpy()
        self.ll = self.ll + own_b.cpu().numpy()
        self.batches += 1
        self.inputs_used += n
        self.batch_sizes[n] = self.batch_sizes.get(n, 0) + 1

    def merge(self, other: CkaSums) -> None:
        self.kl = self.kl + other.kl
        self.kk = self.kk + other.kk
        self.ll = self.ll + other.ll
        self.batches += other.batches
        self.inputs_used += other.inputs_used
        self.inputs_skipped += other.inputs_skipped
        for size, count in other.batch_sizes.items():
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + count

    def values(self) -> np.ndarray:
        """CKA of every pair (NaN where a side has no positive HSIC: constant features, or no
        batch of 4 or more)."""
        if self.diagonal:
            denominator = self.kk * self.ll
        else:
            denominator = self.kk[:, None] * self.ll[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(denominator > 0, self.kl / np.sqrt(np.maximum(denominator, 0)), np.nan)
        return np.asarray(result, dtype=np.float64)


__all__ = ["CHUNK", "ESTIMATOR", "MIN_BATCH", "CkaSums", "biased_cka", "gram", "hsic0", "hsic1"]
