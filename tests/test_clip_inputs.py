"""Video clips (issue 15): animated images, --clip folders and video files read as (C, T, H, W) with
the exact frame values, sampled to the model's length; bad clips refused in one line."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import textwrap
from pathlib import Path

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


def test_a_video_file_needs_pyav_and_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError, installed or not
    (tmp_path / "walk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ReportError, match=r"reading video files needs PyAV: pip install 'reportgen\[video\]'"):
        load_paths([tmp_path / "walk.mp4"], Preprocessing(), LAYOUT)
    with pytest.raises(ReportError, match=r"walk\.mp4 is a video, but conv takes"):
        load_paths([tmp_path / "walk.mp4"], Preprocessing(), InputLayout(sample_rank=3, channels=3, layer="conv"))
    (tmp_path / "video_model.py").write_text(MODEL)
    code = main([str(tmp_path / "video_model.py") + ":build", str(tmp_path / "walk.mp4"), "--input-shape", "3,4,8,8",
                 "-o", str(tmp_path / "r.html"), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("reportgen: error: reading video files needs PyAV: pip install 'reportgen[video]'"), err
    assert not (tmp_path / "r.html").exists()


try:
    import av
except ImportError:  # the `video` extra; CI installs it with the `test` extra, so these run there
    av = None
needs_pyav = pytest.mark.skipif(av is None, reason="PyAV (`av`, the video extra) is not installed: no video file "
                                                   "can be written or decoded")


def noise_frames(count: int, height: int = 20, width: int = 28) -> list[np.ndarray]:
    """Seeded uint8 RGB noise: every frame and pixel distinct enough that a wrong frame, a swapped
    channel or a shifted crop shows."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def write_video(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str) -> None:
    """Encode `frames` with PyAV at 10 fps (a lossless codec in an RGB pixel format keeps every value)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# FFmpeg's own lossless codecs (built into every PyAV wheel) in RGB pixel formats: decoded to rgb24,
# the values are the ones written, so the comparison below is exact (to float rounding)
LOSSLESS = [("walk.mkv", "ffv1", "bgr0"), ("walk.mov", "png", "rgb24")]


@needs_pyav
@pytest.mark.parametrize(("name", "codec", "pix_fmt"), LOSSLESS)
def test_a_video_file_is_a_clip_of_its_exact_frames_sampled_and_preprocessed(tmp_path, name, codec, pix_fmt):
    frames = noise_frames(7)
    write_video(tmp_path / name, frames, codec, pix_fmt)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    preprocessing = Preprocessing(center_crop=(12, 16), mean=tuple(mean), std=tuple(std))
    # 7 frames to 4: round(linspace(0, 6, 4)); to 10: round(linspace(0, 6, 10)), halves to even
    for length, chosen, how in [(4, [0, 2, 4, 6], "frames sampled evenly"),
                                (10, [0, 1, 1, 2, 3, 3, 4, 5, 5, 6], "frames repeated to fill the model's length")]:
        inputs = load_paths([tmp_path / name], preprocessing, LAYOUT, clip_frames=length)
        # computed here from the frames as written: centre crop of 20x28 to 12x16 starts at (4, 6)
        want = np.stack([(frames[i][4:16, 6:22] / 255 - mean) / std for i in chosen])  # (T, H, W, C)
        got = inputs.load(0)
        assert got.shape == (3, length, 12, 16) and got.dtype == torch.float32
        np.testing.assert_allclose(got.permute(1, 2, 3, 0).numpy(), want, rtol=0, atol=1e-5)
        assert inputs.item_notes[0] == (f"clip of 7 frames -> {length} ({how}: {', '.join(map(str, chosen))})",)


@needs_pyav
def test_a_video_model_reports_on_a_video_file_showing_its_frames(tmp_path, capsys):
    frames = noise_frames(7)
    write_video(tmp_path / "walk.mkv", frames, "ffv1", "bgr0")
    (tmp_path / "video_model.py").write_text(MODEL)
    code = main([str(tmp_path / "video_model.py") + ":build", str(tmp_path / "walk.mkv"), "--input-shape", "3,4,20,28",
                 "-o", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json"), "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "r.json").read_text())
    assert [(item["name"], item["shape"]) for item in document["inputs"]] == [("walk.mkv", [3, 4, 20, 28])]
    html = (tmp_path / "r.html").read_text()
    assert "clip of 7 frames -&gt; 4 (frames sampled evenly: 0, 2, 4, 6)" in html
    # the thumbnail: the 4 frames the model saw, 2 white columns apart, stretched with one scale for
    # the clip; noise spans 0..255, so the stretch is the identity (to rounding: 1 level)
    found = re.search(r'src="data:image/png;base64,([^"]+)" width="118" height="20" alt="input walk\.mkv', html)
    assert found, "no 118x20 frame strip for walk.mkv"
    strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(found.group(1)))).convert("RGB"), dtype=np.int16)
    for k, i in enumerate([0, 2, 4, 6]):
        assert np.abs(strip[:, 30 * k:30 * k + 28] - frames[i]).max() <= 1, f"frame {i}"
    assert (strip[:, 28:30] == 255).all()


def case_video_of_one_frame(folder: Path) -> tuple[Path, str]:
    write_video(folder / "one.mkv", noise_frames(1), "ffv1", "bgr0")
    return folder / "one.mkv", "one.mkv decodes to 1 frame(s); a clip needs at least 2"


def case_truncated_mp4(folder: Path) -> tuple[Path, str]:
    write_video(folder / "whole.mp4", noise_frames(3), "png", "rgb24")
    data = (folder / "whole.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is written last: cut off
    return folder / "cut.mp4", "cut.mp4: Invalid data found when processing input"


def case_empty_mp4(folder: Path) -> tuple[Path, str]:
    (folder / "empty.mp4").write_bytes(b"")
    return folder / "empty.mp4", "empty.mp4: Invalid data found when processing input"


def case_text_named_mp4(folder: Path) -> tuple[Path, str]:
    (folder / "notes.mp4").write_text("not a video, just text\n")
    return folder / "notes.mp4", "notes.mp4: Invalid data found when processing input"


def case_audio_only(folder: Path) -> tuple[Path, str]:
    with av.open(str(folder / "sound.mkv"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return folder / "sound.mkv", "sound.mkv holds no video stream"


@needs_pyav
@pytest.mark.parametrize("case", [case_video_of_one_frame, case_truncated_mp4, case_empty_mp4, case_text_named_mp4,
                                  case_audio_only], ids=lambda case: case.__name__[len("case_"):])
def test_a_bad_video_file_is_one_line_exit_2(tmp_path, capsys, case):
    video, expected = case(tmp_path)
    (tmp_path / "video_model.py").write_text(MODEL)
    code = main([str(tmp_path / "video_model.py") + ":build", str(video), "--input-shape", "3,4,20,28",
                 "-o", str(tmp_path / "r.html"), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("reportgen: error: ") and expected in err and video.name in err, err
    assert not (tmp_path / "r.html").exists()
