"""Models as vision users have them (issue 17): `timm:NAME`, `hf:FOLDER` (a transformers
save_pretrained folder), and checkpoints as frameworks write them (a LightningModule's `model.`
prefix, EMA entries, a different head with --weights-partial). Offline and small: timm models
are built with random weights, the transformers folders are written here from tiny configs.

Expected numbers come from the libraries themselves (timm's own eval transform, the
transformers image processor and the model's own `logits`) or from models built here, never
from reportgen's code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.cli import main
from reportgen.exports import json_schema
from tests.fixtures.models import tiny_cnn, tiny_inputs

TINY = "tests.fixtures.models:tiny_cnn"
# A tiny ViT of timm's: 64 px, two blocks; its pretrained_cfg told the size too (timm's data
# config reads pretrained_cfg, not img_size), as a user of a custom size does.
VIT_ARGS = ["--model-arg", "img_size=64", "--model-arg", "depth=2",
            "--model-arg", "pretrained_cfg_overlay={'input_size': (3, 64, 64)}"]


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    out, js = tmp_path / "report.html", tmp_path / "report.json"
    code = main([*args, "-o", str(out), "--json", str(js), "-q", "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(js.read_text(encoding="utf-8"))
    jsonschema.validate(report, json_schema())  # the new model fields are the schema's
    return report


def refused(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused run (exit 2, nothing written)."""
    out = tmp_path / "refused.html"
    capsys.readouterr()  # what the test's own setup printed (transformers' save_pretrained bars)
    code = main([*args, "-o", str(out), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reportgen: error: "), err
    assert not out.exists()
    return lines[0]


def photo(path: Path, size: tuple[int, int] = (90, 120), seed: int = 0) -> Path:
    """An RGB image with smooth gradients and noise (noise is where resize filters differ most)."""
    rng = np.random.default_rng(seed)
    h, w = size
    ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    array = np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def thumbnail(tmp_path: Path) -> np.ndarray:
    return np.asarray(Image.open(tmp_path / "images" / "input--000.png").convert("RGB"), dtype=np.int16)


def expected_thumbnail(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """What the README says a thumbnail is: the tensor de-normalised, area-averaged to at most
    96 px a side, level = floor(x * 255 + 0.5)."""
    image = tensor * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    h, w = image.shape[-2:]
    scale = min(1.0, 96 / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size != (h, w):
        image = torch.nn.functional.adaptive_avg_pool2d(image[None], size)[0]
    return np.floor(image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int16).transpose(1, 2, 0)


def assert_predictions(report: dict, logits: torch.Tensor, names: list[str] | None = None, atol: float = 1e-5) -> None:
    probabilities = torch.softmax(logits, dim=1)
    assert len(report["predictions"]) == len(logits)
    for row, prediction in enumerate(report["predictions"]):
        top = prediction["top"][0]
        assert top["index"] == int(probabilities[row].argmax())
        assert top["probability"] == pytest.approx(float(probabilities[row].max()), abs=atol)
        if names is not None:
            assert top["label"] == names[top["index"]]


# --- timm ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm() -> object:
    return pytest.importorskip("timm", reason="timm is a test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def transformers() -> object:
    return pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[test]'")


def timm_reference(timm, model: torch.nn.Module, image: Path) -> tuple[torch.Tensor, dict]:
    """timm's own eval transform of `image` for `model`, and the data config it came from."""
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return transform(Image.open(image).convert("RGB")), config


def test_timm_resnet18_random_weights_take_timm_preprocessing_and_imagenet_names(timm, tmp_path, capsys):
    image = photo(tmp_path / "photo.png")
    report = run(["timm:resnet18", str(image), "--images", str(tmp_path / "images"), "--layers", "conv1"],
                 tmp_path, capsys)
    torch.manual_seed(0)  # --seed 0: the init reportgen built
    model = timm.create_model("resnet18", pretrained=False).eval()
    tensor, config = timm_reference(timm, model, image)
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == 0.95  # timm's, not torchvision's
    with torch.no_grad():
        assert_predictions(report, model(tensor[None]), atol=1e-4)
    info = report["model"]
    assert info["kind"] == "timm" and info["name"] == "resnet18" and info["random_weights"] is True
    assert info["init"] == "timm default init, seed 0"
    assert "pretrained_cfg" in info["preprocessing_source"]
    steps = report["run"]["preprocessing"]
    assert any("resize shorter side to 235 px (bicubic" in s for s in steps), steps
    assert any("center crop 224x224" in s for s in steps) and any("0.485, 0.456, 0.406" in s for s in steps)
    # Class names: timm's own ImageNet table, shipped in the package.
    table = timm.data.ImageNetInfo("imagenet-1k")
    top = report["predictions"][0]["top"][0]
    assert top["label"] == table.index_to_description(top["index"])
    seen = thumbnail(tmp_path)
    wanted = expected_thumbnail(tensor, config["mean"], config["std"])
    assert seen.shape == wanted.shape == (96, 96, 3)
    assert np.abs(seen - wanted).max() <= 1


def test_timm_small_vit_with_a_lightning_checkpoint(timm, tmp_path, capsys):
    """A custom-size timm ViT: preprocessing from its pretrained_cfg (the thumbnail is timm's
    transform within one level), weights from a Lightning-style checkpoint (prefix named)."""
    image = photo(tmp_path / "photo.png", size=(70, 50), seed=3)
    torch.manual_seed(5)
    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=3,
                                pretrained_cfg_overlay={"input_size": (3, 64, 64)}).eval()
    checkpoint = tmp_path / "epoch=3-step=40.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3,
                "global_step": 40, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.01},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]}],
                "lr_schedulers": [], "callbacks": {}, "loops": {}}, checkpoint)
    report = run(["timm:vit_tiny_patch16_224", *VIT_ARGS, "--model-arg", "num_classes=3", "--weights",
                  str(checkpoint), str(image), "--images", str(tmp_path / "images")], tmp_path, capsys)
    tensor, config = timm_reference(timm, trained, image)
    assert config["input_size"] == (3, 64, 64) and config["crop_pct"] == 0.9
    with torch.no_grad():
        assert_predictions(report, trained(tensor[None]), atol=1e-4)
    info = report["model"]
    assert (info["kind"], info["checkpoint_key"], info["checkpoint_prefix"]) == ("timm", "state_dict", "model.")
    assert info["random_weights"] is False and info["left_at_init"] == []
    assert np.abs(thumbnail(tmp_path) - expected_thumbnail(tensor, config["mean"], config["std"])).max() <= 1
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "prefix &#39;model.&#39; stripped from every key" in page


def test_timm_weights_default_is_refused_offline_saying_what_to_pass(timm, tmp_path, capsys):
    line = refused(["timm:resnet18", "--weights", "DEFAULT"], tmp_path, capsys)
    assert "--weights PATH" in line and "timm/resnet18" in line and "never downloads" in line


def test_timm_unknown_name_is_one_line(timm, tmp_path, capsys):
    line = refused(["timm:resnet18x"], tmp_path, capsys)
    assert "timm has no model 'resnet18x'" in line and "resnet18" in line


# --- Hugging Face transformers ------------------------------------------------------------

LABELS = {0: "cat", 1: "dog", 2: "<b>bird</b>"}


def vit_folder(transformers, folder: Path, num_labels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A tiny ViT classifier and its image processor, written as save_pretrained writes them."""
    torch.manual_seed(seed)
    labels = {i: LABELS.get(i, f"class {i}") for i in range(num_labels)}
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
                                    id2label=labels, label2id={v: k for k, v in labels.items()})
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # logits far apart, so an argmax does not hang on rounding
        model.classifier.weight.mul_(20)
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return model


def test_hf_vit_folder_predictions_are_its_own_logits_and_labels_id2label(transformers, tmp_path, capsys):
    folder = tmp_path / "tiny-vit"
    model = vit_folder(transformers, folder)
    images = [photo(tmp_path / f"p{i}.png", size=(40 + 7 * i, 56), seed=i) for i in range(3)]
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    pixels = processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    report = run([f"hf:{folder}", *map(str, images), "--images", str(tmp_path / "images")], tmp_path, capsys)
    with torch.no_grad():
        output = model(pixels)
    assert_predictions(report, output.logits, names=[LABELS[i] for i in range(3)], atol=2e-3)
    info = report["model"]
    assert info["kind"] == "hf" and info["type"] == "ViTForImageClassification"
    assert info["file"].endswith("model.safetensors") and info["left_at_init"] == []
    import hashlib
    assert info["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert "preprocessor_config.json" in info["preprocessing_source"]
    assert np.abs(thumbnail(tmp_path) - expected_thumbnail(pixels[0], (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))).max() <= 1
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<b>bird</b>" not in page  # id2label reaches the page escaped
    # The ModelOutput's logits drive Grad-CAM too: a map per shown input.
    assert len(report["insight"]["gradcam"]["inputs"]) == 3


def test_hf_tensor_inputs_give_exactly_the_logits_argmax_with_ablation(transformers, tmp_path, capsys):
    """On the exact pixel_values (a .pt), predictions are the ModelOutput's logits; ablation and
    misfiring run on the same logits (the mapping's `logits` entry, not its first tensor)."""
    folder = tmp_path / "tiny-vit"
    model = vit_folder(transformers, folder, seed=1)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.save(pixels, tmp_path / "pixels.pt")
    report = run([f"hf:{folder}", str(tmp_path / "pixels.pt"), "--ablation"], tmp_path, capsys)
    with torch.no_grad():
        logits = model(pixels).logits
    assert_predictions(report, logits, names=[LABELS[i] for i in range(3)])
    ablation = report["impact"]["ablation"]
    assert ablation["layers"], report["impact"]
    # The baseline loss: cross-entropy of the logits against the model's own predictions.
    baseline = float(torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1)))
    assert ablation["baseline_loss"] == pytest.approx(baseline, rel=1e-4, abs=1e-6)


def test_hf_resnet_folder_with_convnext_processor(transformers, tmp_path, capsys):
    """transformers' ResNet ships ConvNeXt's processor: shortest_edge / crop_pct, then a crop."""
    folder = tmp_path / "tiny-resnet"
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=4)
    model = transformers.ResNetForImageClassification(config).eval()
    model.save_pretrained(folder)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.875).save_pretrained(folder)
    image = photo(tmp_path / "photo.png", size=(60, 80))
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    pixels = processor(Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    report = run([f"hf:{folder}", str(image), "--images", str(tmp_path / "images")], tmp_path, capsys)
    with torch.no_grad():
        assert_predictions(report, model(pixels).logits, names=[f"LABEL_{i}" for i in range(4)], atol=5e-3)
    steps = report["run"]["preprocessing"]
    assert any("resize shorter side to 45 px (bicubic" in s for s in steps) and any("center crop 40x40" in s for s in steps)
    mean, std = processor.image_mean, processor.image_std
    assert np.abs(thumbnail(tmp_path) - expected_thumbnail(pixels[0], tuple(mean), tuple(std))).max() <= 1


def test_hf_different_head_is_refused_then_loaded_with_weights_partial(transformers, tmp_path, capsys):
    folder = tmp_path / "tiny-vit"
    saved = vit_folder(transformers, folder)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.save(pixels, tmp_path / "pixels.pt")
    args = [f"hf:{folder}", "--model-arg", "num_labels=5", str(tmp_path / "pixels.pt")]
    line = refused(args, tmp_path, capsys)
    assert "classifier" in line and "--weights-partial" in line
    report = run([*args, "--weights-partial"], tmp_path, capsys)
    info = report["model"]
    assert info["left_at_init"] == ["classifier.bias", "classifier.weight"]
    assert "partly loaded" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert any("classifier.weight" in note for note in report["notes"])
    # transformers' own load of the same folder with a 5-way head, its new head drawn under the
    # same seed (--seed 0): the backbone is the folder's, the head the seeded init.
    torch.manual_seed(0)
    expected = transformers.ViTForImageClassification.from_pretrained(
        str(folder), num_labels=5, ignore_mismatched_sizes=True, local_files_only=True).eval()
    assert torch.equal(expected.vit.embeddings.patch_embeddings.projection.weight,
                       saved.vit.embeddings.patch_embeddings.projection.weight)
    with torch.no_grad():
        assert_predictions(report, expected(pixels).logits)


def test_hf_backbone_folder_gives_features_not_predictions(transformers, tmp_path, capsys):
    folder = tmp_path / "vit-backbone"
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64)
    transformers.ViTModel(config).save_pretrained(folder)
    torch.save(torch.rand(2, 3, 32, 32), tmp_path / "pixels.pt")
    report = run([f"hf:{folder}", str(tmp_path / "pixels.pt")], tmp_path, capsys)
    # pooler_output is (N, 32): features, which must not be shown as 32 "classes".
    assert report["predictions"] == []
    assert any("no image-classification head" in note for note in report["notes"])


def test_hf_path_that_is_not_a_folder_is_one_line(transformers, tmp_path, capsys):
    line = refused(["hf:google/vit-base-patch16-224"], tmp_path, capsys)
    assert "never downloads" in line and "--local-dir" in line


@pytest.mark.parametrize(("package", "spec"), [("timm", "timm:resnet18"), ("transformers", "hf:{folder}")])
def test_without_the_optional_package_the_error_says_what_to_install(package, spec, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "tiny-vit"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setitem(sys.modules, package, None)  # `import timm` raises ImportError
    line = refused([spec.format(folder=folder)], tmp_path, capsys)
    assert f"needs the optional package {package}" in line and "pip install" in line


# --- checkpoints as frameworks write them -------------------------------------------------

def lightning(state: dict, prefix: str = "model.", **extra: object) -> dict:
    return {"state_dict": {prefix + k: v for k, v in state.items()}, "epoch": 7, "global_step": 70,
            "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"classes": 5},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
            "lr_schedulers": [], "callbacks": {}, "loops": {}, **extra}


@pytest.mark.parametrize("prefix", ["model.", "net.backbone.", "model._orig_mod."])
def test_lightning_checkpoint_loads_with_its_prefix_named(prefix, tmp_path, capsys):
    trained = tiny_cnn(seed=3).eval()
    torch.save(lightning(trained.state_dict(), prefix), tmp_path / "last.ckpt")
    inputs = tiny_inputs(4)
    torch.save(inputs, tmp_path / "x.pt")
    report = run([TINY, "--weights", str(tmp_path / "last.ckpt"), str(tmp_path / "x.pt")], tmp_path, capsys)
    with torch.no_grad():
        assert_predictions(report, trained(inputs))
    info = report["model"]
    assert (info["kind"], info["checkpoint_key"], info["checkpoint_prefix"]) == ("factory", "state_dict", prefix)
    assert info["checkpoint_entries"] == [] and info["random_weights"] is False


@pytest.mark.parametrize(("key", "seed"), [(None, 3), ("state_dict", 3), ("state_dict_ema", 4), ("model_ema", 5)])
def test_ema_checkpoint_loads_the_chosen_entry(key, seed, tmp_path, capsys):
    raw, ema, model_ema = (tiny_cnn(seed=s).eval() for s in (3, 4, 5))
    # timm's train script writes state_dict + state_dict_ema; its ModelEmaV2 wraps the copy in `.module`.
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": ema.state_dict(),
                "model_ema": {f"module.{k}": v for k, v in model_ema.state_dict().items()}, "epoch": 9},
               tmp_path / "ckpt.pth")
    inputs = tiny_inputs(3)
    torch.save(inputs, tmp_path / "x.pt")
    chosen = ["--weights-key", key] if key else []
    report = run([TINY, "--weights", str(tmp_path / "ckpt.pth"), *chosen, str(tmp_path / "x.pt")], tmp_path, capsys)
    with torch.no_grad():
        assert_predictions(report, tiny_cnn(seed=seed).eval()(inputs))
    info = report["model"]
    assert info["checkpoint_key"] == (key or "state_dict")
    assert info["checkpoint_entries"] == ["state_dict", "state_dict_ema", "model_ema"]
    assert info["checkpoint_prefix"] == ("module." if key == "model_ema" else None)
    assert any("state_dict, state_dict_ema, model_ema" in note and "--weights-key" in note for note in report["notes"])


def test_weights_key_not_in_the_file_lists_the_entries(tmp_path, capsys):
    torch.save({"state_dict": tiny_cnn().state_dict(), "state_dict_ema": tiny_cnn().state_dict()}, tmp_path / "c.pth")
    line = refused([TINY, "--weights", str(tmp_path / "c.pth"), "--weights-key", "ema"], tmp_path, capsys)
    assert "'ema'" in line and "state_dict, state_dict_ema" in line


def test_different_head_refused_then_loaded_partially_and_reported(tmp_path, capsys):
    trained = tiny_cnn(seed=3)  # 5 classes
    torch.save(lightning(trained.state_dict()), tmp_path / "last.ckpt")
    inputs = tiny_inputs(3)
    torch.save(inputs, tmp_path / "x.pt")
    args = [TINY, "--model-arg", "classes=7", "--weights", str(tmp_path / "last.ckpt"), str(tmp_path / "x.pt")]
    line = refused(args, tmp_path, capsys)
    assert "shape conflicts" in line and "6.weight" in line and "--weights-partial" in line
    report = run([*args, "--weights-partial"], tmp_path, capsys)
    # Independently: the factory's own 7-class init with every tensor but the head's replaced.
    expected = tiny_cnn(seed=0, classes=7).eval()
    backbone = {k: v for k, v in trained.state_dict().items() if not k.startswith("6.")}
    expected.load_state_dict(backbone, strict=False)
    with torch.no_grad():
        assert_predictions(report, expected(inputs))
    info = report["model"]
    assert info["left_at_init"] == ["6.bias", "6.weight"]
    assert info["unused_tensors"] == ["model.6.bias", "model.6.weight"]
    assert info["checkpoint_prefix"] == "model."
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "partly loaded: 2 tensor(s) left at their init" in page and "2 left at init: 6.bias, 6.weight" in page


def test_weights_partial_without_weights_is_refused(tmp_path, capsys):
    assert "--weights-partial goes with --weights" in refused([TINY, "--weights-partial"], tmp_path, capsys)
