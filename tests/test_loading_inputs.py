"""Inputs (issue 3): every image format PIL reads, folders, globs, --dataset, tensors of any rank,
synthetic probes, preprocessing, labels and forward_args; each checked by the numbers the model
computed on what it was fed.

Most tests use `ChannelMeanNet`: its logits are gain * (the mean of each input channel) plus a
constant 0 logit, so log(p_i / p_last) / gain recovers exactly what the model saw.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.cli import main
from reportgen.grids import decode_data_uri
from tests.fixtures.models import ChannelMeanNet, DictInputNet, Fixed32Net, TwoInputNet

MEAN_NET = "tests.fixtures.models:ChannelMeanNet"
GAIN = 4.0


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    out, js = tmp_path / "report.html", tmp_path / "report.json"
    code = main([*args, "-o", str(out), "--json", str(js), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert out.stat().st_size > 1000
    return json.loads(js.read_text(encoding="utf-8"))


def seen_means(prediction: dict, channels: int) -> list[float]:
    """The per-channel means ChannelMeanNet saw, recovered from its softmax probabilities."""
    probs = {top["index"]: top["probability"] for top in prediction["top"]}
    assert len(probs) == channels + 1, "the test needs every class in the top-k"
    return [math.log(probs[c] / probs[channels]) / GAIN for c in range(channels)]


def solid(mode: str, size: tuple[int, int], value: object) -> Image.Image:
    return Image.new(mode, size, value)  # type: ignore[arg-type]


def write_formats(folder: Path) -> dict[str, tuple[tuple[float, float, float], float, str | None]]:
    """One uniform image per format: name -> (expected channel means, tolerance, expected note)."""
    folder.mkdir()
    solid("RGB", (12, 10), (200, 30, 60)).save(folder / "a_rgb.jpg", quality=100, subsampling=0)
    gray16 = Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16))
    assert gray16.mode == "I;16"
    gray16.save(folder / "b_gray16.png")
    palette = solid("RGB", (12, 10), (10, 200, 90)).quantize(colors=4)
    palette.save(folder / "c_palette.png")
    solid("RGBA", (12, 10), (255, 0, 0, 64)).save(folder / "d_rgba.png")
    solid("L", (12, 10), 77).save(folder / "e_gray.png")
    solid("RGB", (12, 10), (5, 250, 128)).save(folder / "f_lossless.webp", lossless=True)
    solid("RGB", (12, 10), (1, 2, 3)).save(folder / "g_pic.bmp")
    solid("RGB", (12, 10), (250, 125, 0)).save(folder / "h_pic.tiff")
    g16 = 40000 / 65535
    over_white = (255 * 64 / 255 + 255 * (1 - 64 / 255)) / 255, (255 - 64) / 255, (255 - 64) / 255
    return {
        "a_rgb.jpg": ((200 / 255, 30 / 255, 60 / 255), 3 / 255, None),
        "b_gray16.png": ((g16, g16, g16), 1e-5, "16-bit grayscale kept at full precision; gray channel repeated to 3"),
        "c_palette.png": ((10 / 255, 200 / 255, 90 / 255), 1e-5, "palette image expanded"),
        "d_rgba.png": (over_white, 1.5 / 255, "alpha channel composited on white and dropped"),
        "e_gray.png": ((77 / 255,) * 3, 1e-5, "gray channel repeated to 3 channels"),
        "f_lossless.webp": ((5 / 255, 250 / 255, 128 / 255), 1e-5, None),
        "g_pic.bmp": ((1 / 255, 2 / 255, 3 / 255), 1e-5, None),
        "h_pic.tiff": ((250 / 255, 125 / 255, 0.0), 1e-5, None),
    }


def test_every_image_format_reaches_the_model_with_its_exact_pixels(tmp_path, capsys):
    expected = write_formats(tmp_path / "imgs")
    report = run([MEAN_NET, str(tmp_path / "imgs")], tmp_path, capsys)
    assert [p["input"] for p in report["predictions"]] == sorted(expected)
    for prediction in report["predictions"]:
        means, tolerance, _ = expected[prediction["input"]]
        assert seen_means(prediction, 3) == pytest.approx(means, abs=tolerance), prediction["input"]
    # The adaptation is said in the report, not done silently.
    summary = next(n for n in report["notes"] if n.startswith("Channels adapted"))
    assert "I;16: 16-bit grayscale kept at full precision" in summary and "b_gray16.png" in summary
    assert "RGBA: alpha channel composited on white and dropped (d_rgba.png)" in summary
    assert "L: gray channel repeated to 3 channels (e_gray.png)" in summary
    assert "a_rgb.jpg" not in summary and "h_pic.tiff" not in summary


def test_per_input_notes_reach_the_report_model_and_the_html(tmp_path):
    from reportgen import generate_report

    expected = write_formats(tmp_path / "imgs")
    paths = sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    report = generate_report(ChannelMeanNet(), paths, device="cpu", max_size_mb=0)
    for item in report.model.inputs:
        note = expected[item.name][2]
        if note is None:
            assert item.notes == ()
        else:
            assert len(item.notes) == 1 and note in item.notes[0], item.notes
    html = report.to_html()
    assert '<span class="input-note">RGBA image: alpha channel composited on white and dropped</span>' in html
    assert '<span class="input-note">I;16 image: 16-bit grayscale kept at full precision' in html


def test_gray_model_gets_luma_and_grayscale_option_repeats_gray(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    solid("RGB", (8, 8), (200, 30, 60)).save(folder / "color.png")
    luma = round((200 * 299 + 30 * 587 + 60 * 114) / 1000) / 255
    report = run([MEAN_NET, "--model-arg", "channels=1", str(folder)], tmp_path, capsys)
    assert seen_means(report["predictions"][0], 1) == pytest.approx([luma], abs=1e-5)
    assert any("colour reduced to 1 gray channel" in n for n in report["notes"])
    # --grayscale on a 3-channel model: luma, repeated to 3 channels, and said so.
    report = run([MEAN_NET, "--grayscale", str(folder)], tmp_path, capsys)
    assert seen_means(report["predictions"][0], 3) == pytest.approx([luma] * 3, abs=1e-5)
    assert any(step.startswith("convert to grayscale") for step in report["run"]["preprocessing"])
    assert any("colour reduced to gray (luma); gray channel repeated to 3" in n for n in report["notes"])


def half_red_half_blue(path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20, 0] = 255
    array[:, 20:, 2] = 255
    Image.fromarray(array).save(path)


def test_resize_crop_and_normalise_are_applied_in_order_and_listed(tmp_path, capsys):
    half_red_half_blue(tmp_path / "split.png")
    args = [MEAN_NET, str(tmp_path / "split.png"), "--resize", "10,20", "--center-crop", "6,6",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    report = run(args, tmp_path, capsys)
    assert report["inputs"][0]["shape"] == [3, 6, 6]
    # The centre crop straddles the red/blue edge: half of it red, half blue, then normalised.
    means = seen_means(report["predictions"][0], 3)
    assert means == pytest.approx([(0.5 - 0.5) / 0.25, (0 - 0.5) / 0.25, (0.5 - 0.5) / 0.25], abs=1e-4)
    steps = report["run"]["preprocessing"]
    assert [s.split(" (")[0].split(":")[0] for s in steps] == [
        "convert to RGB", "resize to 10x20", "center crop 6x6", "scale pixels to [0, 1]", "normalise"]
    # each step says where it came from: an option only for what an option asked for
    assert [s.rsplit(" (", 1)[1] for s in steps] == [
        "default: the model's first conv takes 3 channels)", "--resize)", "--center-crop)",
        "default for image files)", "--mean and --std)"]


def test_preprocessing_steps_no_option_asked_for_say_they_are_defaults(tmp_path, capsys):
    half_red_half_blue(tmp_path / "split.png")
    report = run([MEAN_NET, str(tmp_path / "split.png"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"],
                 tmp_path, capsys)
    steps = report["run"]["preprocessing"]
    assert not any("option" in s for s in steps)
    assert steps[0].endswith("(default: the model's first conv takes 3 channels)")
    assert steps[1] == "scale pixels to [0, 1] (8-bit / 255, 16-bit / 65535) (default for image files)"
    assert steps[2] == "normalise: (x - [0.5, 0.5, 0.5]) / [0.25, 0.25, 0.25] (--mean and --std)"


def test_thumbnail_is_the_denormalised_tensor_the_model_saw(tmp_path):
    from reportgen import generate_report
    from reportgen.preprocess import Preprocessing

    half_red_half_blue(tmp_path / "split.png")
    # No resize here: antialiasing would blend the two columns at the red/blue edge.
    prep = Preprocessing(center_crop=(6, 6), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    report = generate_report(ChannelMeanNet(), [tmp_path / "split.png"], preprocessing=prep, device="cpu",
                             max_size_mb=0)
    thumb = report.model.inputs[0].thumbnail
    assert thumb is not None and (thumb.width, thumb.height) == (6, 6)  # the crop, not the 40x20 file
    pixels = np.asarray(Image.open(io.BytesIO(decode_data_uri(thumb.data_uri))).convert("RGB"))
    assert (pixels[:, :3] == [255, 0, 0]).all() and (pixels[:, 3:] == [0, 0, 255]).all()


def test_folders_recurse_sorted_skip_hidden_and_globs_expand(tmp_path, capsys):
    root = tmp_path / "tree"
    for rel in ("a/2.png", "a/10.png", "b/sub/1.png", ".hidden/x.png", "a/.ipynb_checkpoints/y.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        solid("RGB", (4, 4), (10, 20, 30)).save(root / rel)
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    report = run([MEAN_NET, str(root)], tmp_path, capsys)
    assert [i["name"] for i in report["inputs"]] == ["10.png", "2.png", "1.png"]
    report = run([MEAN_NET, str(root / "a" / "*.png"), str(root / "b" / "**" / "*.png")], tmp_path, capsys)
    assert [i["name"] for i in report["inputs"]] == ["10.png", "2.png", "1.png"]


def make_dataset(root: Path) -> None:
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for k in range(2):
            solid("RGB", (6, 6), rgb).save(root / name / f"{name}{k}.png")


def test_dataset_labels_flow_into_predictions(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    labels = tmp_path / "labels.txt"
    labels.write_text("r\ng\nb\n", encoding="utf-8")
    # --labels: each class folder takes the index of its name in the labels file.
    report = run([MEAN_NET, "--model-arg", "zero_logit=False", "--dataset", str(tmp_path / "ds"),
                  "--labels", str(labels)], tmp_path, capsys)
    assert [p["true_label"] for p in report["predictions"]] == ["b", "b", "g", "g", "r", "r"]
    assert all(p["correct"] is True for p in report["predictions"])
    assert [p["top"][0]["label"] for p in report["predictions"]] == ["b", "b", "g", "g", "r", "r"]
    # Without --labels: classes numbered in sorted folder order (as ImageFolder does), named after
    # the folders; here b=0, g=1, r=2, so only green lands on its own index.
    report = run([MEAN_NET, "--model-arg", "zero_logit=False", "--dataset", str(tmp_path / "ds")], tmp_path, capsys)
    assert [i["label"] for i in report["inputs"]] == ["b", "b", "g", "g", "r", "r"]
    assert [p["correct"] for p in report["predictions"]] == [False, False, True, True, False, False]
    assert any("class folders" in n and "sorted folder order" in n for n in report["notes"])


def test_label_pattern_reads_true_classes_from_file_names(tmp_path, capsys):
    folder = tmp_path / "named"
    folder.mkdir()
    for i, (rgb, label) in enumerate([((255, 0, 0), 0), ((0, 0, 255), 2), ((0, 255, 0), 0)]):
        solid("RGB", (5, 5), rgb).save(folder / f"sample_{i:02d}_{label}.png")
    report = run([MEAN_NET, str(folder), "--label-pattern", r"_(\d)\.png$"], tmp_path, capsys)
    assert [p["correct"] for p in report["predictions"]] == [True, True, False]


def test_tensor_files_pt_npy_npz_single_and_batched(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    single = torch.rand(3, 5, 6, generator=gen)
    batch = torch.rand(2, 3, 5, 6, generator=gen)
    torch.save(single, tmp_path / "one.pt")
    np.save(tmp_path / "many.npy", batch.numpy())
    npz_x = torch.rand(3, 3, 5, 6, generator=gen)
    np.savez(tmp_path / "labelled.npz", x=npz_x.numpy(), y=np.array([0, 1, 2]))
    torch.save({"images": single * 0.5}, tmp_path / "dict.pt")
    report = run([MEAN_NET, str(tmp_path / "one.pt"), str(tmp_path / "many.npy"), str(tmp_path / "labelled.npz"),
                  str(tmp_path / "dict.pt")], tmp_path, capsys)
    names = [p["input"] for p in report["predictions"]]
    assert names == ["one.pt", "many.npy[0]", "many.npy[1]", "labelled.npz[0]", "labelled.npz[1]",
                     "labelled.npz[2]", "dict.pt"]
    fed = [single, batch[0], batch[1], *npz_x, single * 0.5]
    for prediction, tensor in zip(report["predictions"], fed):
        assert seen_means(prediction, 3) == pytest.approx(tensor.mean(dim=(1, 2)).tolist(), abs=1e-5)
    assert [p["true_label"] for p in report["predictions"]][3:6] == ["class 0", "class 1", "class 2"]
    assert not report["run"]["preprocessing"] or "normalise" not in " ".join(report["run"]["preprocessing"])
    assert any("used as stored" in n for n in report["notes"])


def test_signals_for_conv1d_and_volumes_for_conv3d(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    signals = torch.rand(4, 2, 50, generator=gen)
    np.save(tmp_path / "signals.npy", signals.numpy())
    report = run([MEAN_NET, "--model-arg", "channels=2", "--model-arg", "dims=1", str(tmp_path / "signals.npy")],
                 tmp_path, capsys)
    assert [i["shape"] for i in report["inputs"]] == [[2, 50]] * 4
    for prediction, signal in zip(report["predictions"], signals):
        assert seen_means(prediction, 2) == pytest.approx(signal.mean(dim=1).tolist(), abs=1e-5)
    # One-channel Conv1d, signals stored without a channel axis: (N, L) read as N samples.
    mono = torch.rand(3, 40, generator=gen)
    np.save(tmp_path / "mono.npy", mono.numpy())
    report = run([MEAN_NET, "--model-arg", "channels=1", "--model-arg", "dims=1", str(tmp_path / "mono.npy")],
                 tmp_path, capsys)
    assert [i["shape"] for i in report["inputs"]] == [[1, 40]] * 3
    assert seen_means(report["predictions"][2], 1) == pytest.approx([float(mono[2].mean())], abs=1e-5)
    assert any("channel axis added" in n for n in report["notes"])
    # A volume (C, D, H, W) for a Conv3d model, as one .pt sample.
    volume = torch.rand(2, 4, 5, 6, generator=gen)
    torch.save(volume, tmp_path / "volume.pt")
    report = run([MEAN_NET, "--model-arg", "channels=2", "--model-arg", "dims=3", str(tmp_path / "volume.pt")],
                 tmp_path, capsys)
    assert report["inputs"][0]["shape"] == [2, 4, 5, 6]
    assert seen_means(report["predictions"][0], 2) == pytest.approx(volume.mean(dim=(1, 2, 3)).tolist(), abs=1e-5)


def test_no_inputs_gives_probes_sized_from_the_model(tmp_path, capsys):
    report = run([MEAN_NET], tmp_path, capsys)
    assert {tuple(i["shape"]) for i in report["inputs"]} == {(3, 224, 224)}
    assert any("synthetic probe inputs" in n for n in report["notes"])
    # A model that only takes 32x32: larger sizes are tried, rejected and named.
    report = run(["tests.fixtures.models:Fixed32Net"], tmp_path, capsys)
    assert {tuple(i["shape"]) for i in report["inputs"]} == {(3, 32, 32)}
    probe_note = next(n for n in report["notes"] if n.startswith("Probe shape 3x32x32"))
    assert "224x224" in probe_note and "rejected" in probe_note
    report = run([MEAN_NET, "--input-shape", "3,20,24"], tmp_path, capsys)
    assert {tuple(i["shape"]) for i in report["inputs"]} == {(3, 20, 24)}
    assert any("from --input-shape" in n for n in report["notes"])
    report = run([MEAN_NET, "--model-arg", "channels=2", "--model-arg", "dims=1"], tmp_path, capsys)
    assert {tuple(i["shape"]) for i in report["inputs"]} == {(2, 1024)}


def test_probe_search_leaves_the_model_as_it_was():
    from reportgen import generate_report

    model = Fixed32Net().train()
    model.conv.eval()  # mixed modes must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = generate_report(model, None, device="cpu", max_size_mb=0)
    assert report.model.inputs[0].shape == (3, 32, 32)
    assert model.training and not model.conv.training and model.head.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.conv._forward_hooks


@pytest.mark.parametrize("form", ["lines", "json-list", "json-map"])
def test_labels_file_forms_name_the_classes(tmp_path, capsys, form):
    names = ["red", "green", "blue", "none"]
    text = {
        "lines": "\n".join(names) + "\n",
        "json-list": json.dumps(names),
        "json-map": json.dumps({str(i): n for i, n in reversed(list(enumerate(names)))}),
    }[form]
    (tmp_path / "labels").write_text(text, encoding="utf-8")
    solid("RGB", (4, 4), (0, 200, 0)).save(tmp_path / "g.png")
    report = run([MEAN_NET, str(tmp_path / "g.png"), "--labels", str(tmp_path / "labels")], tmp_path, capsys)
    assert report["predictions"][0]["top"][0]["label"] == "green"
    assert sorted(t["label"] for t in report["predictions"][0]["top"]) == sorted(names)


def test_forward_args_feed_models_with_several_or_dict_inputs():
    from reportgen import generate_report

    gen = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 8, 8, generator=gen)
    two = TwoInputNet()
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4] = 0
    report = generate_report(two, images, device="cpu", max_size_mb=0,
                             forward_args=lambda batch: (batch, mask.to(batch.device)))
    with torch.no_grad():
        expected = torch.softmax(two(images, mask), dim=1)
    for row, prediction in enumerate(report.model.predictions):
        assert prediction.top[0].index == int(expected[row].argmax())
        assert prediction.top[0].probability == pytest.approx(float(expected[row].max()), abs=1e-6)
    assert [s.name for s in report.model.sections] == ["conv"]
    assert report.model.totals.available  # torchinfo walked it with both arguments

    keyed = DictInputNet()
    report = generate_report(keyed, images, device="cpu", max_size_mb=0,
                             forward_args=lambda batch: {"batch": {"image": batch, "scale": 2.0}})
    with torch.no_grad():
        expected = torch.softmax(keyed({"image": images, "scale": 2.0}), dim=1)
    assert [p.top[0].index for p in report.model.predictions] == expected.argmax(dim=1).tolist()


@pytest.mark.parametrize("orientation, upright", [
    (2, lambda a: a[:, ::-1]),
    (3, lambda a: a[::-1, ::-1]),
    (6, lambda a: np.rot90(a, k=-1)),  # the camera was turned: the picture is shown turned clockwise
    (8, lambda a: np.rot90(a, k=1)),
])
def test_exif_orientation_is_applied_and_noted(tmp_path, orientation, upright):
    import reportgen
    from reportgen.api import coerce_inputs

    rng = np.random.default_rng(orientation)
    stored = (np.linspace(0, 255, 24)[None, :, None] * np.ones((16, 1, 3)) * 0.6
              + rng.integers(0, 90, (16, 24, 3))).astype(np.uint8)  # 16 rows, 24 columns: not square
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:  # the decoded pixels as stored, orientation ignored
        decoded = np.asarray(raw.convert("RGB"), dtype=np.float32) / 255
    seen = coerce_inputs([path], None).load(0).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(seen, np.ascontiguousarray(upright(decoded)), atol=1e-6)
    turned = {2: "mirrored left-right", 3: "rotated 180°", 6: "rotated 90° clockwise",
              8: "rotated 90° counter-clockwise"}[orientation]
    report = reportgen.generate_report(ChannelMeanNet(), [path], device="cpu", max_size_mb=0)
    assert report.model.inputs[0].notes == (f"{turned} per EXIF orientation {orientation}",)
    assert f'<span class="input-note">{turned} per EXIF orientation {orientation}</span>' in report.to_html()
    assert any("1 image(s) turned upright per their EXIF orientation" in n and "phone.jpg" in n
               for n in report.model.notes)


def _png_chunks(data: bytes) -> list[bytes]:
    """The raw chunks (length, type, data, CRC) of a PNG file, in order."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at:at + 12 + length])
        at += 12 + length
    return chunks


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_png_exif_orientation_is_read_without_decoding_wherever_the_chunk_sits(tmp_path, exif_after_pixels):
    """The eXIf chunk may come before or after the image data (PIL writes it before); listing
    walks the chunk headers instead of decoding, and must find it in both places, as PIL's own
    (decoding) getexif does, and the input must be turned and noted."""
    import reportgen
    from reportgen.api import coerce_inputs
    from reportgen.inputs import png_exif

    stored = np.random.default_rng(3).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif.tobytes())
    chunks = _png_chunks(buffer.getvalue())
    assert [c[4:8] for c in chunks].index(b"eXIf") < [c[4:8] for c in chunks].index(b"IDAT")
    if exif_after_pixels:  # move eXIf just before IEND
        moved = next(c for c in chunks if c[4:8] == b"eXIf")
        chunks = [c for c in chunks if c is not moved]
        chunks.insert(len(chunks) - 1, moved)
    path = tmp_path / "turned.png"
    path.write_bytes(buffer.getvalue()[:8] + b"".join(chunks))
    with Image.open(path) as image:
        assert image.getexif().get(0x0112) == 6  # PIL agrees the file carries orientation 6
    assert png_exif(path).get(0x0112) == 6
    seen = coerce_inputs([path], None).load(0).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(seen, np.rot90(stored, k=-1) / 255, atol=1e-6)  # 6: 90° clockwise
    report = reportgen.generate_report(ChannelMeanNet(), [path], device="cpu", max_size_mb=0)
    assert report.model.inputs[0].notes == ("rotated 90° clockwise per EXIF orientation 6",)


def test_png_exif_of_a_file_without_one_is_empty(tmp_path):
    from reportgen.inputs import png_exif

    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "plain.png")
    assert dict(png_exif(tmp_path / "plain.png")) == {}
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    assert dict(png_exif(tmp_path / "fake.png")) == {}


def test_images_without_exif_orientation_are_used_as_stored(tmp_path):
    from reportgen.api import coerce_inputs

    stored = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    seen = coerce_inputs([tmp_path / "plain.png"], None).load(0).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(seen, stored / 255, atol=1e-6)


def noisy_png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_files_left_out_of_an_input_folder_are_listed(tmp_path, capsys):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.png"):
        solid("RGB", (4, 4), (10, 20, 30)).save(root / rel)
    for rel in ("notes.txt", "sub/meta.csv", "sub/extra.npy", ".DS_Store"):
        (root / rel).write_bytes(b"x")
    report = run([MEAN_NET, str(root)], tmp_path, capsys)
    assert [i["name"] for i in report["inputs"]] == ["a.png", "b.png"]
    listed = [n for n in report["notes"] if "were not used" in n]
    assert listed == ["3 file(s) in the input folders are neither images nor tensors (or are tensors beside "
                      "images) and were not used: notes.txt, extra.npy, meta.csv."]  # in path order


def test_dataset_skips_and_lists_unreadable_files_and_strict_stops(tmp_path, capsys):
    """3 classes x 3 images, batches of 2: a truncated image in the first batch, one in the last
    place (the tail), and a file that is no image at all; the others keep their own labels."""
    root = tmp_path / "ds"
    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for k in range(3):
            solid("RGB", (6, 6), rgb).save(root / name / f"{name}{k}.png")
    whole = noisy_png_bytes(0)
    (root / "b" / "b1.png").write_bytes(whole[: len(whole) // 2])  # sorted first class: b
    (root / "r" / "r2.png").write_bytes(whole[: len(whole) // 3])  # the very last input
    (root / "g" / "g1.png").write_bytes(b"not an image at all" * 20)
    (root / "g" / "readme.txt").write_text("about the greens", encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("r\ng\nb\n", encoding="utf-8")
    args = [MEAN_NET, "--model-arg", "zero_logit=False", "--dataset", str(root), "--labels", str(labels),
            "--batch-size", "2"]
    report = run(args, tmp_path, capsys)
    kept = ["b0.png", "b2.png", "g0.png", "g2.png", "r0.png", "r1.png"]
    assert [i["name"] for i in report["inputs"]] == kept
    assert [p["true_label"] for p in report["predictions"]] == [name[0] for name in kept]
    assert all(p["correct"] is True for p in report["predictions"])  # labels stayed with their images
    skipped = [n for n in report["notes"] if "unreadable input file(s) skipped" in n]
    assert len(skipped) == 1 and skipped[0].startswith("3 unreadable input file(s) skipped")
    for name in ("b1.png", "g1.png", "r2.png", "truncated", "not an image PIL can read", "--strict"):
        assert name in skipped[0], name
    assert any("1 file(s) in --dataset ds are not images" in n and "readme.txt" in n for n in report["notes"])

    out = tmp_path / "strict.html"
    code = main([*args, "--strict", "-o", str(out), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    # listing reads headers only, so the file that is no image at all stops the run before any
    # batch decodes the truncated b1.png (the API test below has a truncated file stop it)
    assert code == 2 and len(err.splitlines()) == 1 and "g1.png" in err and "not an image PIL can read" in err
    assert not out.exists()


def test_unreadable_file_named_on_its_own_stays_an_error_and_api_strict(tmp_path):
    import reportgen
    from reportgen.errors import ReportError

    folder = tmp_path / "imgs"
    folder.mkdir()
    solid("RGB", (5, 5), (1, 2, 3)).save(folder / "ok.png")
    whole = noisy_png_bytes(1)
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    report = reportgen.generate_report(ChannelMeanNet(), [str(folder)], device="cpu")
    assert [i.name for i in report.model.inputs] == ["ok.png"]
    with pytest.raises(ReportError, match="cannot read image .*cut.png"):
        reportgen.generate_report(ChannelMeanNet(), [str(folder)], device="cpu", strict=True)
    with pytest.raises(ReportError, match="cannot read image .*cut.png"):
        reportgen.generate_report(ChannelMeanNet(), [str(folder / "ok.png"), str(folder / "cut.png")], device="cpu")
    with pytest.raises(ReportError, match="cannot read image .*cut.png"):  # named, and also in the folder
        reportgen.generate_report(ChannelMeanNet(), [str(folder), str(folder / "cut.png")], device="cpu")


def test_input_set_batches_stay_full_and_aligned_when_inputs_are_left_out():
    from reportgen.errors import ReportError
    from reportgen.inputs import InputSet

    broken = {1, 2, 6, 9}  # two in a row, one mid-set, the last one

    def load(i: int) -> torch.Tensor:
        if i in broken:
            raise ReportError(f"cannot read image f{i}.png: broken")
        return torch.full((1, 2), float(i))

    inputs = InputSet(names=[f"f{i}.png" for i in range(10)], loader=load, labels=list(range(10)),
                      skippable=[True] * 10)
    inputs.check_tail(3)
    seen: list[float] = []
    start = 0
    while start < len(inputs):  # the loop analyze runs
        stop = min(start + 3, len(inputs))
        batch = inputs.batch(start, stop)
        assert batch.shape[0] == stop - start
        assert [inputs.label(i) for i in range(start, stop)] == [int(v) for v in batch[:, 0, 0]]
        assert inputs.names[start:stop] == [f"f{int(v)}.png" for v in batch[:, 0, 0]]
        seen.extend(float(v) for v in batch[:, 0, 0])
        start = stop
    assert seen == [float(i) for i in range(10) if i not in broken]
    assert sorted(inputs.skipped) == sorted(f"f{i}.png (cannot read image f{i}.png: broken)" for i in broken)
    named = InputSet(names=["a", "b"], loader=load, skippable=[False, False])
    with pytest.raises(ReportError, match="f1.png: broken"):
        named.batch(0, 2)


def test_unreadable_tensor_file_in_a_folder_is_skipped_but_a_wrong_shape_is_not(tmp_path):
    import reportgen
    from reportgen.errors import ReportError

    folder = tmp_path / "tensors"
    folder.mkdir()
    good = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.save(good, folder / "a.pt")
    (folder / "b.pt").write_bytes(b"not a torch file")
    report = reportgen.generate_report(ChannelMeanNet(), [str(folder)], device="cpu", max_size_mb=0)
    assert [i.name for i in report.model.inputs] == ["a.pt[0]", "a.pt[1]"]
    assert any(n.startswith("1 unreadable input file(s) skipped") and "b.pt (cannot read" in n
               for n in report.model.notes)
    with pytest.raises(ReportError, match="cannot read .*b.pt"):
        reportgen.generate_report(ChannelMeanNet(), [str(folder)], device="cpu", strict=True)
    np.save(folder / "c.npy", np.zeros((3, 4), dtype=np.float32))  # a 2-D array for a Conv2d: user mistake
    (folder / "b.pt").unlink()
    with pytest.raises(ReportError, match=r"c.npy has shape \[3, 4\]"):
        reportgen.generate_report(ChannelMeanNet(), [str(folder)], device="cpu")
