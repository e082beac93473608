"""Token pictures of transformer layers (collectors/token_pictures.py): per shown input, the
token-norm map and the first three principal components of the tokens as RGB. Checked against
an independent numpy computation (norms, SVD) for ViT tokens and Swin-style channels-last maps,
for a pass split in shares, and on the page and in the JSON."""

from __future__ import annotations

import json
import pickle

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.analysis import TokenPicture
from reportgen.collectors.token_pictures import TokenPictureCollector, draw, might_have_tokens
from reportgen.engine.main_pass import MainPass
from reportgen.exports import image_files, json_schema
from reportgen.inputs import from_tensor
from reportgen.palettes import FLAT_INDEX
from reportgen.sites import RAW_BY_REQUEST
from reportgen.size_budget import Drawing, reduce_token_pictures
from tests.fixtures.models import tiny_cnn, tiny_inputs
from tests.helpers import decode

GRID, DIM, PATCH = 6, 8, 4
BLOCKS = ["blocks.0", "blocks.1"]


def planted_tokens(seed: int = 0) -> torch.Tensor:
    """(GRID * GRID, DIM) tokens, row-major over the grid: three spatial patterns along three
    orthonormal directions with variances far apart (x ramp squared >> y ramp cubed >> a sparse
    lattice), on a constant offset. Each pattern is lopsided, so its most extreme token is at
    its high end and the sign rule makes that end bright."""
    rows, cols = torch.meshgrid(torch.arange(GRID, dtype=torch.float64), torch.arange(GRID, dtype=torch.float64),
                                indexing="ij")
    patterns = torch.stack([(cols / (GRID - 1)) ** 2, (rows / (GRID - 1)) ** 3,
                            ((rows + cols) % 3 == 0).double()]).flatten(1)  # (3, T)
    directions, _ = torch.linalg.qr(torch.randn(DIM, 3, generator=torch.Generator().manual_seed(seed),
                                                dtype=torch.float64))
    return (patterns.T * torch.tensor([6.0, 3.0, 1.0], dtype=torch.float64)) @ directions.T + 2.0


class PlantedBlock(nn.Module):
    """A transformer block (norm, attention, MLP) whose patch tokens are the planted ones plus a
    small input-dependent part (so inputs differ); its class token is far larger than any patch
    token (a picture that kept it would show one hot cell). `channels_last`: (N, H, W, D) as Swin."""

    def __init__(self, planted: torch.Tensor, *, channels_last: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.mlp = nn.Linear(DIM, DIM)
        self.channels_last = channels_last
        self.register_buffer("planted", planted.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(x.shape[0], -1, DIM) if self.channels_last else x[:, 1:]
        mixed, _ = self.attn(self.norm(patches), self.norm(patches), self.norm(patches), need_weights=False)
        tokens = self.planted + 0.05 * patches + 0 * self.mlp(mixed)
        if self.channels_last:
            return tokens.reshape(x.shape)
        return torch.cat([torch.full_like(x[:, :1], 1000.0), tokens], dim=1)


class PlantedViT(nn.Module):
    def __init__(self, *, channels_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.channels_last = channels_last
        self.patch = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.blocks = nn.Sequential(PlantedBlock(planted_tokens(0), channels_last=channels_last),
                                    PlantedBlock(planted_tokens(1), channels_last=channels_last))
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch(x)
        if self.channels_last:
            return self.head(self.blocks(patches.permute(0, 2, 3, 1)).mean(dim=(1, 2)))
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return self.head(self.blocks(tokens)[:, 0])

    def tokens(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Each block's patch tokens (N, T, D), computed here without reportgen."""
        with torch.no_grad():
            patches = self.patch(images)
            if self.channels_last:
                x = patches.permute(0, 2, 3, 1)
            else:
                x = torch.cat([self.cls.expand(images.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
            found = {}
            for name, block in zip(BLOCKS, self.blocks):
                x = block(x)
                flat = x.reshape(x.shape[0], -1, DIM) if self.channels_last else x[:, 1:]
                found[name] = flat.double().numpy()
        return found


def images(count: int, seed: int = 4) -> torch.Tensor:
    return torch.rand(count, 3, PATCH * GRID, PATCH * GRID, generator=torch.Generator().manual_seed(seed))


# -- the documented computation, in numpy --


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """(h, w, ...) -> (h / factor, w / factor, ...): the average pooling of the pictures."""
    h, w = values.shape[:2]
    return values.reshape(h // factor, factor, w // factor, factor, *values.shape[2:]).mean(axis=(1, 3))


def expected_norm(tokens: np.ndarray, factor: int = 1, grid: tuple[int, int] = (GRID, GRID)) -> np.ndarray:
    """Token L2 norms on the grid, pooled, stretched from the full-resolution min to max to 0..253."""
    norms = np.linalg.norm(tokens, axis=1).reshape(grid)
    pooled = block_mean(norms, factor)
    return np.floor((pooled - norms.min()) / (norms.max() - norms.min()) * 253 + 0.5)


def expected_pca(tokens: np.ndarray, factor: int = 1,
                 grid: tuple[int, int] = (GRID, GRID)) -> tuple[np.ndarray, np.ndarray]:
    """PC1-3 scores of the centred tokens by numpy's SVD, each signed so that its largest-|score|
    token is positive, min-max scaled over the tokens, pooled, to 0..255; and the explained
    fractions of the variance."""
    centred = tokens - tokens.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :3] * s[:3]
    for k in range(3):
        if scores[np.argmax(np.abs(scores[:, k])), k] < 0:
            scores[:, k] *= -1
    unit = (scores - scores.min(axis=0)) / (scores.max(axis=0) - scores.min(axis=0))
    rgb = np.floor(block_mean(unit.reshape(*grid, 3), factor) * 255 + 0.5)
    return rgb, s[:3] ** 2 / np.sum(s ** 2)


def assert_within_one_level(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.int64) - expected.astype(np.int64)).max() <= 1


def run_pass(model: nn.Module, batch: torch.Tensor, *, keep_inputs: int, tile_size: int = 32, first: int = 0,
             count: int | None = None) -> TokenPictureCollector:
    collector = TokenPictureCollector(tile_size=tile_size, keep_inputs=keep_inputs)
    main = MainPass(model, [collector], observed=["patch", *BLOCKS], plan=None, raw_reason=RAW_BY_REQUEST)
    with torch.inference_mode():
        main.run(from_tensor(batch), device=torch.device("cpu"), dtype=torch.float32, batch_size=2, first=first,
                 count=count)
    return collector


# -- the pictures --


@pytest.mark.parametrize("channels_last", [False, True], ids=["vit-tokens", "swin-channels-last"])
def test_norm_and_pca_pictures_equal_an_independent_numpy_computation(channels_last: bool) -> None:
    model = PlantedViT(channels_last=channels_last).eval()
    batch = images(3)
    found = run_pass(model, batch, keep_inputs=2).result()
    assert sorted(found) == BLOCKS  # the patch conv has no token layout: no pictures
    tokens = model.tokens(batch)
    for name in BLOCKS:
        assert sorted(found[name]) == [0, 1]  # the shown inputs only
        for index, picture in found[name].items():
            assert picture.grid == (GRID, GRID) and picture.channels == DIM and picture.components == 3
            norms = np.linalg.norm(tokens[name][index], axis=1)
            assert picture.norm_min == pytest.approx(norms.min(), rel=1e-6)
            assert picture.norm_max == pytest.approx(norms.max(), rel=1e-6)
            assert_within_one_level(picture.norm, expected_norm(tokens[name][index]))
            rgb, explained = expected_pca(tokens[name][index])
            assert picture.pca is not None
            assert_within_one_level(picture.pca, rgb)
            np.testing.assert_allclose(picture.explained, explained, rtol=0, atol=1e-6)
            # the planted patterns come back in order, bright at their high end
            assert sum(picture.explained) > 0.99 and picture.explained[0] > picture.explained[1] > picture.explained[2]
    columns = found["blocks.0"][0].pca[:, :, 0].astype(float)
    assert np.all(np.diff(columns.mean(axis=0)) > 0)  # red: the x ramp, growing to the right
    green = found["blocks.0"][0].pca[:, :, 1].astype(float)
    assert np.all(np.diff(green.mean(axis=1)) > 0)  # green: the y ramp, growing downwards


@pytest.mark.parametrize(("grid", "channels"), [((3, 4), 40), ((5, 4), 3), ((7, 7), 12)],
                         ids=["fewer-tokens-than-channels", "three-channels", "more-tokens-than-channels"])
def test_both_ways_to_the_components_equal_numpys_svd(grid: tuple[int, int], channels: int) -> None:
    """Fewer tokens than channels take the tokens' Gram matrix, more take the channels': both
    give the SVD's components, signed by the documented rule."""
    generator = torch.Generator().manual_seed(sum(grid) + channels)
    scales = torch.linspace(3.0, 0.2, channels, dtype=torch.float64)  # variances apart: components well defined
    tokens = torch.randn(grid[0] * grid[1], channels, generator=generator, dtype=torch.float64) * scales + 1.0
    picture = draw(tokens.T.reshape(1, channels, *grid), 32)[0]
    rgb, explained = expected_pca(tokens.numpy(), grid=grid)
    assert picture.pca is not None and picture.components == 3
    assert_within_one_level(picture.pca, rgb)
    np.testing.assert_allclose(picture.explained, explained, rtol=0, atol=1e-6)
    assert_within_one_level(picture.norm, expected_norm(tokens.numpy(), grid=grid))


def test_pictures_larger_than_the_tile_size_are_pooled_like_feature_maps() -> None:
    model = PlantedViT().eval()
    batch = images(1)
    picture = run_pass(model, batch, keep_inputs=1, tile_size=GRID // 2).result()["blocks.1"][0]
    tokens = model.tokens(batch)["blocks.1"][0]
    assert_within_one_level(picture.norm, expected_norm(tokens, factor=2))
    assert picture.pca is not None
    assert_within_one_level(picture.pca, expected_pca(tokens, factor=2)[0])
    assert picture.grid == (GRID, GRID)  # the grid the pictures were computed on, before pooling


def test_the_sign_rule_makes_the_pictures_independent_of_the_tokens_sign_and_offset() -> None:
    tokens = planted_tokens(2).float() + 0.01 * torch.randn(GRID * GRID, DIM, generator=torch.Generator().manual_seed(1))
    maps = tokens.T.reshape(1, DIM, GRID, GRID)
    base, negated, shifted = draw(maps, 32)[0], draw(-maps, 32)[0], draw(maps + 5.0, 32)[0]
    assert base.pca is not None and negated.pca is not None and shifted.pca is not None
    np.testing.assert_array_equal(base.pca, negated.pca)
    assert_within_one_level(base.pca, shifted.pca)
    np.testing.assert_allclose(base.explained, shifted.explained, atol=1e-6)
    assert not np.array_equal(base.norm, draw(maps + 5.0, 32)[0].norm)  # the norm map does see the offset


def test_few_channels_equal_tokens_and_non_finite_tokens() -> None:
    generator = torch.Generator().manual_seed(2)
    threads = torch.get_num_threads()
    two = draw(torch.randn(1, 2, 3, 3, generator=generator), 32)[0]  # D = 2: two components exist
    assert two.components == 2 and two.pca is not None
    assert not two.pca[:, :, 2].any() and two.pca[:, :, 0].any() and two.pca[:, :, 1].any()
    assert sum(two.explained) == pytest.approx(1.0, abs=1e-9) and two.explained[2] == 0.0
    equal = draw(torch.ones(1, 4, 3, 3), 32)[0]  # no spread: nothing to project, the norm map is flat
    assert equal.components == 0 and equal.pca is not None and not equal.pca.any()
    assert equal.explained == (0.0, 0.0, 0.0)
    assert (equal.norm == FLAT_INDEX).all()
    broken = torch.randn(2, 4, 3, 3, generator=generator)
    broken[0, 1, 2, 2] = float("nan")
    bad, good = draw(broken, 32)
    assert bad.pca is None and bad.explained == () and (bad.norm == FLAT_INDEX).all() and np.isnan(bad.norm_min)
    assert good.pca is not None and good.components == 3  # the other input of the batch is not touched
    assert torch.get_num_threads() == threads  # the eigendecomposition's one thread is given back


def test_a_pass_split_in_two_shares_merges_to_the_one_pass_result() -> None:
    model = PlantedViT().eval()
    batch = images(7)
    whole = run_pass(model, batch, keep_inputs=5)
    first = run_pass(model, batch, keep_inputs=5, count=4)
    second = run_pass(model, batch, keep_inputs=5, first=4)
    first.merge_state(pickle.loads(pickle.dumps(second.state)))  # as rank 0 receives a rank's state
    merged, single = first.result(), whole.result()
    assert sorted(single) == sorted(merged) == BLOCKS
    for name in BLOCKS:
        assert sorted(single[name]) == sorted(merged[name]) == [0, 1, 2, 3, 4]
        assert sorted(second.result()[name]) == [4]  # each share draws only its own shown inputs
        for index, picture in single[name].items():
            other = merged[name][index]
            np.testing.assert_array_equal(picture.norm, other.norm)
            np.testing.assert_array_equal(picture.pca, other.pca)
            np.testing.assert_allclose(picture.explained, other.explained, rtol=1e-12)
            assert picture.norm_min == pytest.approx(other.norm_min, rel=1e-12)


def test_the_size_budget_keeps_the_drawn_inputs_and_pools_to_the_tile_size() -> None:
    model = PlantedViT().eval()
    batch = images(2)
    found = run_pass(model, batch, keep_inputs=2).result()["blocks.0"]
    reduced = reduce_token_pictures(found, Drawing(tile_size=GRID // 2, channels=4, inputs=1))
    assert list(reduced) == [0]
    picture: TokenPicture = reduced[0]
    assert picture.norm.shape == (GRID // 2, GRID // 2) and picture.pca is not None
    assert picture.pca.shape == (GRID // 2, GRID // 2, 3)
    assert_within_one_level(picture.pca, np.floor(block_mean(found[0].pca.astype(float), 2) + 0.5))


def test_under_a_size_budget_token_pictures_follow_the_feature_maps() -> None:
    report = reportgen.generate_report(PlantedViT().eval(), images(6), device="cpu", embedding=False,
                                       max_size_mb=0.12)
    budget = report.model.budget
    assert budget is not None and budget.fits and budget.inputs_drawn[1] < 6
    assert len(report.to_html().encode("utf-8")) <= 0.12e6
    for section in report.model.sections[1:]:
        assert [t.input_index for t in section.token_pictures] == [m.input_index for m in section.feature_maps]
        for tokens, maps in zip(section.token_pictures, section.feature_maps):
            assert (tokens.norm.height, tokens.norm.width) == (maps.grid.tile_height, maps.grid.tile_width)


# -- the page and the JSON --


def test_the_page_and_the_json_show_them_for_token_layers_only() -> None:
    model = PlantedViT().eval()
    assert might_have_tokens(model, ["patch", "blocks.0"]) and not might_have_tokens(model, ["patch"])
    report = reportgen.generate_report(model, images(2), device="cpu", embedding=False, layers=BLOCKS)
    sections = {section.name: section for section in report.model.sections}
    block = sections["blocks.0"]
    assert [item.input_index for item in block.token_pictures] == [0, 1]
    assert decode(block.token_pictures[0].pca).mode == "RGB"
    assert decode(block.token_pictures[0].norm).size == (GRID, GRID)
    html = report.to_html()
    assert html.count('class="grid token-pictures"') == 4  # 2 blocks x 2 inputs
    assert "token-norm map of blocks.0 for input-00" in html
    assert "first three principal components of the tokens of blocks.1 for input-01 as RGB" in html
    assert "PC1-3 explain" in html and "of the token variance" in html
    assert "its sign chosen so that the token farthest from the mean along it is bright" in html
    document = json.loads(report.to_json())
    assert list(jsonschema.Draft202012Validator(json_schema()).iter_errors(document)) == []
    entry = document["visualized"][0]["token_pictures"][0]
    assert entry["grid"] == [GRID, GRID] and entry["components"] == 3 and len(entry["explained_variance"]) == 3
    assert entry["pca"]["sha256"] == block.token_pictures[0].pca.sha256
    files = image_files(report.model)
    assert files[f"tokens-pca--{block.anchor}--000.png"] == block.token_pictures[0].pca
    assert files[f"tokens-norm--{block.anchor}--001.png"] == block.token_pictures[1].norm

    conv = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu", embedding=False)
    assert all(not section.token_pictures for section in conv.model.sections)
    assert "token-pictures" not in conv.to_html()
    assert all(item["token_pictures"] == [] for item in json.loads(conv.to_json())["visualized"])
