"""Video clips for Conv3d models: an animated PNG or a folder of frames becomes (C, T, H, W) with
the documented frame sampling, and the model sees exactly those frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.cli import main
from reportgen.clips import frame_indices

MEAN_NET = ["tests.fixtures.models:ChannelMeanNet", "--model-arg", "channels=3", "--model-arg", "dims=3",
            "--model-arg", "zero_logit=True"]


def gray_frames(levels: list[int]) -> list[Image.Image]:
    return [Image.new("RGB", (8, 6), (level, level, level)) for level in levels]


def seen_mean(report: dict, index: int) -> float:
    """ChannelMeanNet: logit c = 4 * mean of channel c, the last logit 0."""
    top = {c["index"]: c["probability"] for c in report["predictions"][index]["top"]}
    return math.log(top[0] / top[3]) / 4.0


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    out = tmp_path / "r.json"
    code = main([*MEAN_NET, *args, "--device", "cpu", "-q", "-o", str(tmp_path / "r.html"), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_frame_indices_keep_the_ends_and_spread_evenly() -> None:
    assert frame_indices(8, 4) == [0, 2, 5, 7]
    assert frame_indices(5, 5) == [0, 1, 2, 3, 4]
    assert frame_indices(3, 5) == [0, 0, 1, 2, 2]  # shorter than T: frames repeat
    assert frame_indices(1, 3) == [0, 0, 0]


def test_an_animated_png_is_sampled_to_the_clip_length(tmp_path: Path, capsys) -> None:
    levels = [5, 35, 65, 95, 125, 155, 185, 215]
    frames = gray_frames(levels)
    frames[0].save(tmp_path / "clip.png", save_all=True, append_images=frames[1:], duration=40)
    report = run([str(tmp_path / "clip.png"), "--input-shape", "3,4,6,8"], tmp_path, capsys)
    chosen = [levels[i] for i in frame_indices(8, 4)]  # frames 0, 2, 5, 7
    assert seen_mean(report, 0) == pytest.approx(np.mean(chosen) / 255, abs=1e-5)
    assert report["inputs"][0]["shape"] == [3, 4, 6, 8]
    assert any("sampled evenly to 4 (the model's clip length)" in note for note in report["notes"])


def test_a_folder_of_frames_is_one_clip(tmp_path: Path, capsys) -> None:
    levels = [20, 60, 100, 140, 180]
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(gray_frames(levels)):
        frame.save(folder / f"f{k:03d}.png")
    report = run(["--clip", str(folder)], tmp_path, capsys)
    assert seen_mean(report, 0) == pytest.approx(np.mean(levels) / 255, abs=1e-5)  # every frame
    assert report["inputs"][0]["shape"] == [3, 5, 6, 8]


def test_bad_clips_are_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.gif").write_bytes(b"GIF89a broken")
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "bad.gif")], "bad.gif"), (["--clip", str(tmp_path / "empty")], "no frame")):
        code = main([*MEAN_NET, *args, "--device", "cpu", "-q", "-o", str(tmp_path / "r.html")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
