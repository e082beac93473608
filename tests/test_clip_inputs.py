"""Video clips (issue 15): animated images and --clip folders read as (C, T, H, W) with the exact
frame values, sampled to the model's length; bad clips refused in one line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.cli import main
from reportgen.clips import frame_indices
from reportgen.errors import ReportError
from reportgen.inputs import InputLayout, load_clip_folders, load_paths
from reportgen.preprocess import Preprocessing

LAYOUT = InputLayout(sample_rank=4, channels=3, layer="conv")


def gray_frames(count: int, size: int = 8) -> list[Image.Image]:
    """Frame k: a gradient plus 20 k, so every frame and pixel is known."""
    ramp = np.arange(size * size, dtype=np.uint8).reshape(size, size)
    return [Image.fromarray((ramp + 20 * k).astype(np.uint8), mode="L").convert("RGB") for k in range(count)]


def expected(frames: list[Image.Image], length: int) -> torch.Tensor:
    """What the model should see: the sampled frames' own pixels / 255, (3, length, H, W)."""
    arrays = [np.asarray(frames[i], dtype=np.float32) / 255 for i in frame_indices(len(frames), length)]
    return torch.from_numpy(np.stack(arrays)).permute(3, 0, 1, 2)


def test_frame_indices_skip_or_repeat_evenly():
    assert frame_indices(5, 8) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert frame_indices(16, 4) == [0, 5, 10, 15]
    assert frame_indices(3, 3) == [0, 1, 2]


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_an_animated_image_is_a_clip_with_its_exact_frames(tmp_path, suffix):
    frames = gray_frames(5)
    path = tmp_path / f"clip{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, **options)
    inputs = load_paths([path], Preprocessing(), LAYOUT, clip_frames=8)
    assert torch.equal(inputs.load(0), expected(frames, 8))
    assert inputs.item_notes[0] == ("clip of 5 frames -> 8 (frames repeated to fill the model's length: "
                                    "0, 1, 1, 2, 2, 3, 3, 4)",)


def test_a_clip_folder_is_one_clip_of_its_frames_in_name_order(tmp_path):
    frames = gray_frames(12)
    folder = tmp_path / "walk"
    folder.mkdir()
    for k, frame in enumerate(frames):
        frame.save(folder / f"frame_{k:03d}.png")
    inputs = load_clip_folders([folder], Preprocessing(), 4)
    assert inputs.names == ["walk"] and torch.equal(inputs.load(0), expected(frames, 4))
    assert "frames sampled evenly: 0, 4, 7, 11" in inputs.item_notes[0][0]


def test_bad_clips_are_one_line_errors(tmp_path):
    gray_frames(1)[0].save(tmp_path / "still.png")
    with pytest.raises(ReportError, match=r"still\.png is a still image, not a clip"):
        load_paths([tmp_path / "still.png"], Preprocessing(), LAYOUT)
    (tmp_path / "broken.gif").write_bytes(b"GIF89a" + b"\x00" * 7)
    with pytest.raises(ReportError, match=r"broken\.gif"):
        load_paths([tmp_path / "broken.gif"], Preprocessing(), LAYOUT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"--clip .*empty holds 0 frame image\(s\)"):
        load_clip_folders([tmp_path / "empty"], Preprocessing(), 4)


MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                             nn.Linear(4, 3))
    """
)


def test_a_video_model_reports_on_a_gif_and_a_frame_folder(tmp_path, capsys):
    (tmp_path / "video_model.py").write_text(MODEL)
    frames = gray_frames(6)
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=40)
    folder = tmp_path / "b"
    folder.mkdir()
    for k, frame in enumerate(frames[::-1]):
        frame.save(folder / f"{k}.png")
    code = main([str(tmp_path / "video_model.py") + ":build", str(tmp_path / "a.gif"), "--clip", str(folder),
                 "--input-shape", "3,4,8,8", "-o", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json"),
                 "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "r.json").read_text())
    assert [item["shape"] for item in document["inputs"]] == [[3, 4, 8, 8], [3, 4, 8, 8]]
    assert [item["name"] for item in document["inputs"]] == ["a.gif", "b"]


def test_a_video_file_needs_pyav_and_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    (tmp_path / "walk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ReportError, match=r"reading video files needs PyAV.*pip install 'reportgen\[video\]'"):
        load_paths([tmp_path / "walk.mp4"], Preprocessing(), LAYOUT)
    with pytest.raises(ReportError, match=r"walk\.mp4 is a video, but conv takes"):
        load_paths([tmp_path / "walk.mp4"], Preprocessing(), InputLayout(sample_rank=3, channels=3, layer="conv"))
