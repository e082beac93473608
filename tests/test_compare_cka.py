"""Minibatch linear CKA with the unbiased HSIC_1 (reportgen/cka.py), against numbers worked out
here in numpy from the formula of Nguyen, Raghu & Kornblith (2021)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.cka import CkaSums, biased_cka, gram, hsic1


def hsic1_numpy(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC_1 written out: 1/(n(n-3)) [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1]."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    return float((np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3)))


def cka_numpy(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """The same estimator, batch by batch in input order; batches under 4 inputs left out."""
    kl = kk = ll = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        if len(xb) < 4:
            continue
        k, l = xb @ xb.T, yb @ yb.T
        kl += hsic1_numpy(k, l)
        kk += hsic1_numpy(k, k)
        ll += hsic1_numpy(l, l)
    return kl / np.sqrt(kk * ll)


def cka(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    sums = CkaSums(1, 1)
    for start in range(0, len(x), batch):
        xb, yb = torch.from_numpy(x[start:start + batch]), torch.from_numpy(y[start:start + batch])
        sums.update(gram(xb)[None], gram(yb)[None])
    return float(sums.values()[0, 0])


def features(seed: int, n: int = 64, p: int = 20, q: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x[:, :q] @ rng.normal(size=(q, q))) + 0.3 * rng.normal(size=(n, q))
    return x, y


def test_hsic1_matches_the_formula() -> None:
    x, y = features(0, n=9)
    k, l = x @ x.T, y @ y.T
    torch_value = hsic1(torch.from_numpy(k)[None], torch.from_numpy(l)[None])[0, 0].item()
    assert torch_value == pytest.approx(hsic1_numpy(k, l), rel=1e-12, abs=1e-12)
    diagonal = hsic1(torch.from_numpy(np.stack([k, l])), torch.from_numpy(np.stack([l, k])), diagonal=True)
    assert diagonal.numpy() == pytest.approx([hsic1_numpy(k, l), hsic1_numpy(l, k)], rel=1e-12)


def test_self_cka_is_one() -> None:
    x, _ = features(1)
    assert cka(x, x, batch=8) == pytest.approx(1.0, abs=1e-6)
    assert cka(x, x.copy(), batch=16) == pytest.approx(1.0, abs=1e-6)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling() -> None:
    x, y = features(2)
    base = cka(x, y, batch=16)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(x.shape[1], x.shape[1])))
    assert cka(x @ q, y, batch=16) == pytest.approx(base, abs=1e-9)
    assert cka(x, 7.5 * y, batch=16) == pytest.approx(base, abs=1e-9)
    assert cka(0.01 * x @ q, 3 * y, batch=16) == pytest.approx(base, abs=1e-9)


def test_not_invariant_to_non_isotropic_scaling() -> None:
    x, y = features(4)
    base = cka(x, y, batch=16)
    stretch = np.ones(x.shape[1])
    stretch[:3] = 10.0  # three feature axes stretched, the rest not
    assert abs(cka(x * stretch, y, batch=16) - base) > 1e-2


def test_minibatch_result_equals_numpy_over_the_same_batches() -> None:
    x, y = features(5, n=43)  # five batches of 8 and a last one of 3, left out
    assert cka(x, y, batch=8) == pytest.approx(cka_numpy(x, y, batch=8), abs=1e-9)
    sums = CkaSums(1, 1)
    for start in range(0, 43, 8):
        sums.update(gram(torch.from_numpy(x[start:start + 8]))[None], gram(torch.from_numpy(y[start:start + 8]))[None])
    assert (sums.batches, sums.inputs_used, sums.inputs_skipped) == (5, 40, 3)
    assert sums.batch_sizes == {8: 5}


def test_layer_matrix_equals_pairwise() -> None:
    rng = np.random.default_rng(6)
    layers_a = [rng.normal(size=(24, d)) for d in (5, 9, 3)]
    layers_b = [np.tanh(layers_a[0] @ rng.normal(size=(5, 7))), rng.normal(size=(24, 4))]
    sums = CkaSums(3, 2)
    for start in range(0, 24, 8):
        grams_a = torch.stack([gram(torch.from_numpy(a[start:start + 8])) for a in layers_a])
        grams_b = torch.stack([gram(torch.from_numpy(b[start:start + 8])) for b in layers_b])
        sums.update(grams_a, grams_b)
    values = sums.values()
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            assert values[i, j] == pytest.approx(cka_numpy(a, b, batch=8), abs=1e-9)


def test_merge_is_addition() -> None:
    x, y = features(7, n=48)
    whole, first, second = CkaSums(1, 1), CkaSums(1, 1), CkaSums(1, 1)
    for start in range(0, 48, 8):
        grams = gram(torch.from_numpy(x[start:start + 8]))[None], gram(torch.from_numpy(y[start:start + 8]))[None]
        whole.update(*grams)
        (first if start < 24 else second).update(*grams)
    first.merge(second)
    assert first.values() == pytest.approx(whole.values(), abs=1e-12)
    assert (first.batches, first.inputs_used) == (whole.batches, whole.inputs_used)


def test_unbiased_is_near_zero_on_independent_features_where_the_biased_is_not() -> None:
    unbiased, biased = [], []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=(32, 64)), rng.normal(size=(32, 64))
        unbiased.append(cka(x, y, batch=32))
        biased.append(biased_cka(x, y))
    assert abs(np.mean(unbiased)) < 0.02
    assert np.mean(biased) > 0.5


def test_batch_sizes_agree_within_the_estimators_spread() -> None:
    # The estimate is a ratio of sums of per-batch unbiased HSICs: consistent for any batch size,
    # so with enough inputs different batch sizes agree closely (not exactly).
    x, y = features(8, n=512)
    values = [cka(x, y, batch=b) for b in (8, 16, 32, 64)]
    assert max(values) - min(values) < 0.05
    assert cka(x, y, batch=512) == pytest.approx(values[-1], abs=0.05)


def test_gram_of_a_large_layer_is_summed_in_slices_exactly() -> None:
    # more than cka.CHUNK elements: widened to float64 a slice at a time, same numbers
    from reportgen.cka import CHUNK

    features = torch.from_numpy(np.random.default_rng(9).normal(size=(6, 3, 300, 300)).astype(np.float32))
    assert features.numel() > CHUNK
    rows = features.reshape(6, -1).double().numpy()
    assert gram(features).numpy() == pytest.approx(rows @ rows.T, rel=1e-12)


def test_channel_correlation_sums_in_blocks_match_numpy() -> None:
    from reportgen.compare_pass import CorrelationSums

    rng = np.random.default_rng(10)
    a = rng.normal(size=(4, 40, 9000)).astype(np.float32)  # blocks of channels under cka.CHUNK
    b = (0.5 * a + rng.normal(size=a.shape)).astype(np.float32)
    got = CorrelationSums.of(torch.from_numpy(a), torch.from_numpy(b)).correlation()
    want = [np.corrcoef(a[:, c].ravel().astype(np.float64), b[:, c].ravel().astype(np.float64))[0, 1]
            for c in range(40)]
    assert got == pytest.approx(want, abs=1e-9)
