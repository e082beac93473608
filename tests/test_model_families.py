"""Model families beyond classifiers (issue 15): detection and segmentation builders with random
weights build offline (no pretrained backbone), transformer token maps are drawn on their grid.

Everything here runs offline: every download path of torch.hub is replaced by one that fails
the test, and no socket may connect.
"""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_loading_models import run


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any attempt to download or connect fails the test. (torch.hub's functions are patched where
    they are looked up at call time: torchvision binds load_state_dict_from_url when imported.)"""
    import torch.hub
    import torchvision  # noqa: F401  imported before anything is patched

    def download(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {url}")

    def connect(self: socket.socket, address: object) -> None:
        raise AssertionError(f"tried to connect to {address}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(socket.socket, "connect", connect)


def small_image(tmp_path: Path, size: int = 64) -> str:
    torch.save(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(15)), tmp_path / "x.pt")
    return str(tmp_path / "x.pt")


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "lraspp_mobilenet_v3_large"])
def test_detection_and_segmentation_build_with_random_weights_offline(name, offline, tmp_path, capsys):
    """Their builders default to an ImageNet backbone that torchvision downloads even for random
    weights; reportgen asks for none."""
    report = run([f"torchvision:{name}", small_image(tmp_path), "--max-channels", "4"], tmp_path, capsys)
    assert report["model"]["random_weights"] is True
    assert len(report["visualized"]) > 10  # backbone and head convs are drawn as usual


def small_clip(tmp_path: Path, frames: int = 8, size: int = 32) -> str:
    rng = np.random.default_rng(16)
    from PIL import Image

    pictures = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(frames)]
    pictures[0].save(tmp_path / "clip.gif", save_all=True, append_images=pictures[1:], duration=40, loop=0)
    return str(tmp_path / "clip.gif")


@pytest.mark.parametrize(("name", "clip", "drawn"), [
    ("r3d_18", True, "layer1.0.conv1.0"),  # video: a GIF clip, sampled to the weights' 16 frames
    ("quantized_mobilenet_v2", False, "features.0.0"),  # quantization: the float model before quantising
    ("mobilenet_v3_small", False, "features.0.0"),  # a classifier
])
def test_one_builder_of_each_other_family_writes_a_report_offline(name, clip, drawn, offline, tmp_path, capsys):
    """One builder of each family not covered above (the whole set is benchmarks/torchvision_builders.py),
    with random weights, small inputs and no network."""
    source = small_clip(tmp_path) if clip else small_image(tmp_path)
    report = run([f"torchvision:{name}", source, "--max-channels", "4", "--no-embedding"], tmp_path, capsys)
    assert report["model"]["random_weights"] is True
    assert drawn in [layer["name"] for layer in report["visualized"]]
    if clip:
        assert report["inputs"][0]["shape"][:2] == [3, 16]  # (C, T, H, W): 16 frames


def test_optical_flow_builders_refuse_in_one_line(offline, tmp_path, capsys):
    """RAFT's forward takes two images: one line that says so and points to forward_args."""
    from reportgen.cli import main

    code = main(["torchvision:raft_small", small_image(tmp_path), "-o", str(tmp_path / "r.html"), "-q",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("reportgen: error:"), err
    assert "forward_args" in err and not (tmp_path / "r.html").exists()


def test_a_users_own_backbone_argument_is_kept():
    from torchvision import models as tv_models

    from reportgen.models import _no_pretrained_backbone

    assert _no_pretrained_backbone(tv_models, "fcn_resnet50", {}) == {"weights_backbone": None}
    assert _no_pretrained_backbone(tv_models, "fcn_resnet50", {"weights_backbone": "X"}) == {"weights_backbone": "X"}
    assert _no_pretrained_backbone(tv_models, "resnet18", {"num_classes": 3}) == {"num_classes": 3}


# -- token maps --------------------------------------------------------------------------------


GRID, DIM = 4, 6


def planted(seed: int = 3) -> torch.Tensor:
    """(DIM, GRID, GRID) values, one distinct pattern per channel."""
    return torch.randn(DIM, GRID, GRID, generator=torch.Generator().manual_seed(seed))


class PlantedBlock(nn.Module):
    """A transformer block (norm, attention, MLP) whose output is `pattern` on the patch tokens,
    whatever its input, after a class token far larger than any patch value (so a tile that kept
    it would be scaled differently). `channels_last`: a Swin-style (N, H, W, C) output instead."""

    def __init__(self, pattern: torch.Tensor, *, channels_last: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.mlp = nn.Linear(DIM, DIM)
        self.channels_last = channels_last
        tokens = pattern.flatten(1).T  # (GRID * GRID, DIM), row-major over the grid
        self.register_buffer("tokens", torch.cat([torch.full((1, DIM), 1000.0), tokens]))
        self.register_buffer("grid", pattern.permute(1, 2, 0).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.channels_last:
            flat = x.reshape(n, -1, DIM)
            mixed, _ = self.attn(self.norm(flat), self.norm(flat), self.norm(flat), need_weights=False)
            return self.mlp(mixed).reshape(x.shape) * 0 + self.grid
        mixed, _ = self.attn(self.norm(x), self.norm(x), self.norm(x), need_weights=False)
        return self.mlp(mixed) * 0 + self.tokens


class PlantedViT(nn.Module):
    def __init__(self, pattern: torch.Tensor, *, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.patch = nn.Conv2d(3, DIM, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.blocks = nn.Sequential(PlantedBlock(pattern, channels_last=channels_last),
                                    PlantedBlock(pattern.flip(1), channels_last=channels_last))
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch(x)
        if self.channels_last:
            return self.head(self.blocks(patches.permute(0, 2, 3, 1)).mean(dim=(1, 2)))
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


def expected_levels(pattern: torch.Tensor) -> np.ndarray:
    """The documented normalisation: per tile, level = floor((x - min) / (max - min) * 253 + 0.5)."""
    values = pattern.double().numpy()
    low = values.min(axis=(1, 2), keepdims=True)
    high = values.max(axis=(1, 2), keepdims=True)
    return np.floor((values - low) / (high - low) * 253 + 0.5).astype(np.uint8)



@pytest.mark.parametrize("channels_last", [False, True], ids=["vit-tokens", "swin-channels-last"])
def test_planted_token_pattern_gives_tiles_equal_to_it(channels_last):
    from tests.helpers import run_main_pass

    pattern = planted()
    model = PlantedViT(pattern, channels_last=channels_last).eval()
    images = torch.rand(2, 3, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(4))
    activations, _ = run_main_pass(model, ["blocks.0", "blocks.1"], images, batch_size=2, max_channels=DIM,
                                   tile_size=32, keep_inputs=2)
    layers = {layer.key: layer for layer in activations.results()}
    for key, drawn in (("blocks.0", pattern), ("blocks.1", pattern.flip(1))):
        layer = layers[key]
        assert layer.output_shape == (1, DIM, GRID, GRID)
        for index in (0, 1):
            assert np.array_equal(layer.tiles[index], expected_levels(drawn))
            assert np.allclose(layer.tile_max[index], drawn.amax(dim=(1, 2)).numpy())
        assert np.allclose(layer.max, drawn.amax(dim=(1, 2)).numpy())  # the class token is not counted
        assert np.allclose(layer.mean, drawn.mean(dim=(1, 2)).numpy(), atol=1e-6)
        assert "not features aligned with an axis" in layer.site.describe()
        if not channels_last:
            assert "dropping the first token (a class token" in layer.site.describe()


def test_a_transformer_channel_never_positive_is_not_called_dead():
    """A residual-stream channel that is never > 0 is ordinary (no activation, no zero floor):
    no dead-filter or never-positive alert, and the section says "never > 0", not "dead"."""
    import reportgen

    pattern = planted()
    pattern[2] = -pattern[2].abs() - 1.0  # channel 2: negative at every token
    model = PlantedViT(pattern).eval()
    report = reportgen.generate_report(model, torch.rand(2, 3, 4 * GRID, 4 * GRID), device="cpu", max_size_mb=0)
    sections = {section.name: section for section in report.model.sections}
    assert 2 in sections["blocks.0"].insight.dead_channels  # counted: it is never > 0 ...
    assert not [a for a in report.model.alerts  # ... but not alerted as a dead or never-positive channel
                if (a.layer or "").startswith("blocks.") and a.kind in ("dead-filter", "never-positive")]
    block = report.to_html().split('id="layer-blocks.0"', 1)[1][:20000]
    assert '<th scope="row">channels never &gt; 0</th>' in block and '<th scope="row">dead channels</th>' not in block


def test_default_selection_adds_transformer_blocks_next_to_convs():
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    from reportgen.analyze import select_layers

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32)
    assert select_layers(vit, ()) == ["conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in range(3))]
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2])
    assert select_layers(swin, ()) == ["features.0.0", "features.1.0", "features.1.1", "features.3.0", "features.3.1"]
    assert select_layers(PlantedViT(planted()), ()) == ["patch", "blocks.0", "blocks.1"]


def test_a_small_torchvision_vit_reports_its_blocks_as_token_grids():
    from torchvision.models.vision_transformer import VisionTransformer

    import reportgen

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=5)
    report = reportgen.generate_report(vit, torch.rand(2, 3, 32, 32), device="cpu", embedding=False)
    sections = {section.name: section for section in report.model.sections}
    assert set(sections) == {"conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"}
    block = sections["encoder.layers.encoder_layer_1"]
    assert block.output_shape == (1, 16, 4, 4) and block.channels_total == 16
    assert block.feature_maps and "17 tokens of 16 channels laid out row by row on a 4x4 grid" in block.site
    # after global attention the receptive-field row says "the whole input", not a window that
    # starts "in the padding" (a ViT has none); the patch embedding keeps its 8x8 window
    html = report.to_html()
    rows = {name: html[html.index(f'id="layer-{name}"'):] for name in sections}
    block_row = rows["encoder.layers.encoder_layer_1"].split("receptive field", 1)[1][:300]
    assert "the whole input: attention over all tokens ran before this layer; one cell per 8x8 px patch" in block_row
    assert "padding" not in block_row
    assert "8x8 px, stride 8x8, the first cell&#39;s window starts at (0, 0)" in \
        rows["conv_proj"].split("receptive field", 1)[1][:300].replace("'", "&#39;")


def test_token_cells_see_their_patch_or_the_whole_input_and_the_page_says_which():
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    from reportgen.tokens import mixing_before, token_geometry
    from reportgen.top_activations import window

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2])
    assert mixing_before(vit, "encoder.layers.encoder_layer_0") == "global"
    assert mixing_before(vit, "conv_proj") == ""
    assert mixing_before(swin, "features.1.0") == "window"
    patch = token_geometry((4, 4), "", (32, 32))
    assert (patch.receptive_field, patch.stride, patch.first) == ((8, 8), (8, 8), (0, 0))
    assert window((1, 2), patch, (32, 32)) == (8, 16, 16, 24)  # top, left, bottom, right: its own patch
    whole = token_geometry((4, 4), "global", (32, 32))
    assert all(window((y, x), whole, (32, 32)) == (0, 0, 32, 32) for y in range(4) for x in range(4))
    assert "widens each cell's window block by block" in token_geometry((4, 4), "window", (32, 32)).unknown
    assert "equal patches" in token_geometry((4, 4), "", (30, 32)).unknown


def test_layouts_are_recognised_only_where_the_module_says_so():
    from reportgen.tokens import layout_of

    block = PlantedBlock(planted())
    assert layout_of(block, (2, 17, DIM)).grid == (4, 4) and layout_of(block, (2, 17, DIM)).prefix == 1
    assert layout_of(block, (2, 16, DIM)).prefix == 0
    assert layout_of(block, (2, 5, 7, DIM)).grid == (5, 7)  # channels last
    assert layout_of(block, (2, 18, DIM)) is None or layout_of(block, (2, 18, DIM)).prefix == 2
    assert layout_of(block, (2, 17, 5)) is None  # 5 is no feature size of the block
    assert layout_of(nn.Conv1d(3, DIM, 3), (2, DIM, 16)) is None  # a conv's output is channels first
    assert layout_of(block, (2, DIM, 4, DIM)) is None  # dim 1 is a feature size too: channels first
    assert layout_of(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU()), (2, 8, 4, 4)) is None


# -- Grad-CAM on transformers ------------------------------------------------------------------

class QuadrantViT(nn.Module):
    """QuadrantNet (tests/fixtures/insight_models.py) as a ViT: 4x4 patches embedded as
    (brightness b, 0.8 - b), a class token, one block whose attention is uniform (zero query and
    key weights) and passes the normed tokens on unchanged; the head reads the class token, so
    "bright" is decided by the patches whose normed brightness channel is +1 (b > 0.4)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 2, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 2))
        self.blocks = nn.Sequential(ViTBlock())
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.patch.weight[0] = 1.0 / 16
            self.patch.weight[1] = -1.0 / 16
            self.patch.bias[:] = torch.tensor([0.0, 0.8])
            self.head.weight[:] = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
            self.head.bias[:] = torch.tensor([0.0, -8.0])  # one bright patch in 36 makes it "bright"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


class ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(2, elementwise_affine=False)
        self.attention = nn.MultiheadAttention(2, 1, batch_first=True)
        with torch.no_grad():
            self.attention.in_proj_weight.zero_()
            self.attention.in_proj_weight[4:] = torch.eye(2)  # values: the normed tokens
            self.attention.in_proj_bias.zero_()
            self.attention.out_proj.weight.copy_(torch.eye(2))
            self.attention.out_proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        mixed, _ = self.attention(normed, normed, normed, need_weights=False)
        return x + mixed


class WindowAttention(nn.Module):
    """Attention within windows (Swin): here it adds nothing, only its window is declared."""

    def __init__(self) -> None:
        super().__init__()
        self.window_size = (2, 2)
        self.proj = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * 0


class SwinBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(2)
        self.attn = WindowAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm1(x))


class QuadrantSwin(nn.Module):
    """QuadrantNet as a Swin: channels-last (brightness b, 0.8 - b) patches through a window
    attention block, pooled over every token by the head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = QuadrantViT().patch
        self.features = nn.Sequential(SwinBlock())
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight[:] = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
            self.head.bias[:] = torch.tensor([0.0, -3.0])  # mean b 0.0625 with the square: "bright"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.patch(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


@pytest.mark.parametrize(("model", "layer"), [(QuadrantViT, "blocks.0.ln_1"), (QuadrantSwin, "features.0")],
                         ids=["vit", "swin"])
def test_grad_cam_on_transformers_puts_the_heat_on_the_planted_quadrant(model, layer):
    import reportgen
    from tests.fixtures.insight_models import quadrant_images
    from tests.test_insight_gradcam import QUADRANTS, quadrant_share

    report = reportgen.generate_report(model(), quadrant_images(QUADRANTS), device="cpu", labels=["bright", "dark"],
                                       embedding=False)
    cam = report.model.insight.gradcam
    assert cam is not None and cam.layer == layer  # chosen by default
    for entry, (row, column) in zip(cam.inputs, QUADRANTS):
        predicted = entry.maps[0]
        assert predicted.target_label == "bright"
        assert np.asarray(predicted.cam).shape == (6, 6)  # the token grid
        assert quadrant_share(predicted.cam, row, column) > 0.9


# -- attention rollout ---------------------------------------------------------------------------

def small_vit(layers: int = 3) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    return VisionTransformer(image_size=12, patch_size=4, num_layers=layers, num_heads=2, hidden_dim=8, mlp_dim=16,
                             num_classes=4).eval()


class NoClassToken(nn.Module):
    """Patch tokens only (a square number), sequence-first attention (batch_first=False)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.attentions = nn.ModuleList([nn.MultiheadAttention(8, 2) for _ in range(2)])
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).permute(2, 0, 1)  # (T, N, D)
        for attention in self.attentions:
            tokens = tokens + attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(tokens.mean(dim=0))


def explicit_rollout(model: nn.Module, images: torch.Tensor, heads: str, prefix: int) -> np.ndarray:
    """The rollout by explicit matrix products, from weights torch computes itself (need_weights)."""
    import copy

    weights = []
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    doubles = {id(m): copy.deepcopy(m).double() for m in attentions}  # copied before any hook is added

    def keep(module: nn.MultiheadAttention, args: tuple[torch.Tensor, ...]) -> None:
        query = args[0].double()
        _, found = doubles[id(module)](query, query, query, need_weights=True, average_attn_weights=False)
        weights.append(found.detach().numpy())  # (N, H, T, T)

    handles = [m.register_forward_pre_hook(keep) for m in attentions]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for n in range(images.shape[0]):
        rolled = np.eye(weights[0].shape[-1])
        for found in weights:
            joined = found[n].mean(axis=0) if heads == "mean" else found[n].max(axis=0)
            joined = joined + np.eye(joined.shape[0])
            joined = joined / joined.sum(axis=1, keepdims=True)
            rolled = joined @ rolled
        row = rolled[0, prefix:] if prefix else rolled.mean(axis=0)
        side = math.isqrt(row.size)
        maps.append((row / row.max()).reshape(side, side))
    return np.stack(maps)


@pytest.mark.parametrize("heads", ["mean", "max"])
@pytest.mark.parametrize(("make", "prefix"), [(small_vit, 1), (NoClassToken, 0)], ids=["vit", "no-class-token"])
def test_rollout_equals_the_explicit_matrix_products_for_every_input(make, prefix, heads):
    from reportgen.collectors.rollout import RolloutCollector
    from tests.helpers import run_main_pass

    model = make().eval()
    images = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    rollout = RolloutCollector(model, count=5, heads=heads)
    run_main_pass(model, [], images, batch_size=2, collectors=[rollout])  # batches of 2, 2 and 1
    result = rollout.result(5)
    assert result is not None and [r.input_index for r in result.records] == [0, 1, 2, 3, 4]
    expected = explicit_rollout(model, images, heads, prefix)
    for record in result.records:
        assert record.cam.shape == (3, 3)
        assert np.abs(record.cam - expected[record.input_index]).max() < 1e-6
    assert len({r.cam.tobytes() for r in result.records}) == 5  # each input its own map


def test_rollout_is_drawn_in_the_report_like_grad_cam():
    import reportgen

    report = reportgen.generate_report(small_vit(), torch.rand(2, 3, 12, 12), device="cpu", embedding=False)
    rollout = report.model.insight.rollout
    assert rollout is not None and [entry.input_index for entry in rollout.inputs] == [0, 1]
    assert rollout.inputs[0].maps[0].kind == "rollout" and rollout.inputs[0].maps[0].overlay is not None
    assert "Abnar & Zuidema" in rollout.note and "3 attention layer(s)" in rollout.note
    html = report.to_html()
    assert 'id="rollout"' in html and "attention rollout of" in html
    # Grad-CAM on the same ViT: at the last block's first norm, on the 3x3 token grid
    cam = report.model.insight.gradcam
    assert cam is not None and cam.layer == "encoder.layers.encoder_layer_2.ln_1"
    assert np.asarray(cam.inputs[0].maps[0].cam).shape == (3, 3)


# -- detection and segmentation outputs ----------------------------------------------------------

BOXES = torch.tensor([[4.0, 8.0, 40.0, 30.0], [20.0, 0.0, 63.0, 63.0], [0.0, 0.0, 10.0, 10.0]])


class FixedDetector(nn.Module):
    """torchvision's detection output format, fixed: three boxes whose scores are not in order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.conv(x)
        return [{"boxes": BOXES.clone(), "scores": torch.tensor([0.5, 0.9, 0.1]), "labels": torch.tensor([3, 1, 2])}
                for _ in range(x.shape[0])]


class FixedSegmenter(nn.Module):
    """torchvision's segmentation output format: class 1 on the left half, class 2 on the top right
    quarter, class 0 elsewhere (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.conv(x)
        n, _, height, width = x.shape
        scores = torch.zeros(n, 3, height, width)
        scores[:, 0] = 0.5
        scores[:, 1, :, : width // 2] = 1.0
        scores[:, 2, : height // 2, width // 2:] = 1.0
        return {"out": scores}


def test_detections_are_drawn_where_the_output_says():
    import reportgen
    from reportgen.dense_render import RANK_COLOURS, box_pixels
    from tests.helpers import decode

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    report = reportgen.generate_report(FixedDetector(), images, device="cpu", labels=["a", "b", "c", "d"])
    outputs = report.model.outputs
    assert outputs is not None and outputs.kind == "detection" and len(outputs.inputs) == 2
    entry = outputs.inputs[0]
    assert [(item.label, item.value) for item in entry.items] == [("b", pytest.approx(0.9)), ("d", 0.5),
                                                                  ("c", pytest.approx(0.1))]
    assert entry.items[0].box == (20.0, 0.0, 63.0, 63.0) and entry.total == 3
    thumbnail = np.asarray(decode(report.model.inputs[0].thumbnail).convert("RGB"))
    drawn = np.asarray(decode(entry.image).convert("RGB"))
    assert drawn.shape == thumbnail.shape
    expected = thumbnail.copy()
    for rank in (2, 1, 0):  # the best box last, on top
        top, left, bottom, right = box_pixels(BOXES[[1, 0, 2][rank]].tolist(), (64, 64), thumbnail.shape[:2])
        colour = RANK_COLOURS[rank]
        expected[top, left:right + 1] = colour
        expected[bottom, left:right + 1] = colour
        expected[top:bottom + 1, left] = colour
        expected[top:bottom + 1, right] = colour
    assert np.array_equal(drawn, expected)
    assert box_pixels((4.0, 8.0, 40.0, 30.0), (64, 64), (64, 64)) == (8, 4, 29, 39)
    document = json.loads(report.to_json())
    assert document["outputs"]["inputs"][0]["items"][0]["box"] == [20.0, 0.0, 63.0, 63.0]
    assert report.model.predictions == ()  # boxes are not class predictions
    assert "Detections" in report.to_html()


def test_segmentation_overlay_is_the_argmax_map_blended_in_its_class_colours():
    import reportgen
    from reportgen.dense_render import CLASS_COLOURS, SEGMENTATION_ALPHA
    from tests.helpers import decode

    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    report = reportgen.generate_report(FixedSegmenter(), images, device="cpu", random_weights=True)
    outputs = report.model.outputs
    assert outputs is not None and outputs.kind == "segmentation"
    entry = outputs.inputs[0]
    assert [(item.class_index, item.value) for item in entry.items] == [(1, 0.5), (0, 0.25), (2, 0.25)]
    assert "random weights" in outputs.note
    thumbnail = np.asarray(decode(report.model.inputs[0].thumbnail).convert("RGB")).astype(np.float64)
    height, width = thumbnail.shape[:2]
    classes = np.zeros((height, width), dtype=int)
    classes[:, : width // 2] = 1
    classes[: height // 2, width // 2:] = 2
    colour = np.asarray(CLASS_COLOURS, dtype=np.float64)[classes]
    expected = np.floor(thumbnail * (1 - SEGMENTATION_ALPHA) + colour * SEGMENTATION_ALPHA + 0.5)
    assert np.array_equal(np.asarray(decode(entry.image).convert("RGB")), expected.astype(np.uint8))


DENSE_NOTES = {
    "detection": "This model's output is detections (per input: boxes, labels and scores), not class logits: the "
                 "highest-scoring boxes of the shown inputs are drawn in the Detections section.",
    "segmentation": "This model's output is a segmentation (per-pixel class scores), not class logits: the shown "
                    "inputs' class maps (the highest-scoring class at each pixel) are drawn in the Segmentation "
                    "section.",
}


@pytest.mark.parametrize(("model", "kind", "title"), [(FixedDetector, "detection", "Detections"),
                                                      (FixedSegmenter, "segmentation", "Segmentation")])
def test_a_dense_model_note_says_what_its_output_is_and_which_section_draws_it(model, kind, title):
    import reportgen

    report = reportgen.generate_report(model(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(14)),
                                       device="cpu")
    assert report.model.outputs is not None and report.model.outputs.kind == kind
    notes = [note for note in report.model.notes if "class logits" in note]
    assert notes == [DENSE_NOTES[kind] + " No class predictions, accuracy, Grad-CAM or ablation are shown."]
    html = report.to_html()
    # the section the note names is on the page, under that title, and in the sidebar
    assert re.search(rf'<section id="outputs">\s*<h2>{title}</h2>', html)
    assert f'href="#outputs">{title}</a>' in html
    assert "The model&#39;s output is not class logits" not in html and "it was a dict" not in html


def test_a_plain_output_without_logits_keeps_the_generic_note():
    """A conv whose (N, 4, H - 2, W - 2) map is neither logits nor per-pixel scores at the input's
    size: no Detections/Segmentation section, and the note describes the output instead."""
    import reportgen

    torch.manual_seed(15)
    report = reportgen.generate_report(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.rand(2, 3, 16, 16), device="cpu")
    assert report.model.outputs is None
    notes = [note for note in report.model.notes if "class logits" in note]
    assert notes == ["The model's output is not class logits (a floating (batch, classes) tensor, or a 'logits' "
                     "entry): it was a float32 tensor (2, 4, 14, 14). No class predictions, accuracy, Grad-CAM or "
                     "ablation are shown."]


def test_maxvit_partitions_count_as_window_attention():
    """MaxViT attends within partitions (`partition_type`): its Grad-CAM target is then the last
    block's channels-first output, not a norm inside the partitioned layout. Its blocks are the
    window and grid attention layers, not also the layer around them (the same output twice)."""
    from torchvision.models.maxvit import MaxVit

    from reportgen.gradcam import default_cam_layer
    from reportgen.tokens import mixing_before, transformer_blocks

    model = MaxVit(input_size=(64, 64), stem_channels=8, partition_size=2, block_channels=[8, 16],
                   block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=3)
    blocks = transformer_blocks(model)
    assert blocks == [f"blocks.{i}.layers.0.layers.{kind}_attention" for i in (0, 1) for kind in ("window", "grid")]
    assert mixing_before(model, blocks[-1]) == "window"
    assert default_cam_layer(model) == blocks[-1]
