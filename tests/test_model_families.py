"""Model families beyond classifiers (issue 15): detection and segmentation builders with random
weights build offline (no pretrained backbone), transformer token maps are drawn on their grid.

Everything here runs offline: every download path of torch.hub is replaced by one that fails
the test, and no socket may connect.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

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


def test_a_users_own_backbone_argument_is_kept():
    from torchvision import models as tv_models

    from reportgen.models import _no_pretrained_backbone

    assert _no_pretrained_backbone(tv_models, "fcn_resnet50", {}) == {"weights_backbone": None}
    assert _no_pretrained_backbone(tv_models, "fcn_resnet50", {"weights_backbone": "X"}) == {"weights_backbone": "X"}
    assert _no_pretrained_backbone(tv_models, "resnet18", {"num_classes": 3}) == {"num_classes": 3}
