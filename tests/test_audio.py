""".wav inputs: every PCM width decodes to the values an independent decoding gives, stereo is mixed
down for a mono model, the model sees exactly those values, and bad files or rates are one line."""

from __future__ import annotations

import json
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from reportgen.audio import read_wav
from reportgen.cli import main
from reportgen.errors import ReportError

MEAN_NET = "tests.fixtures.models:ChannelMeanNet"


def write_wav(path: Path, samples: np.ndarray, width: int, rate: int = 8000) -> None:
    """samples: (frames, channels) integers in the width's range (unsigned for 8 bits)."""
    frames, channels = samples.shape
    if width == 3:
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in samples.reshape(-1))
    else:
        code = {1: "B", 2: "h", 4: "i"}[width]
        data = struct.pack(f"<{frames * channels}{code}", *samples.reshape(-1).tolist())
    with wave.open(str(path), "wb") as sink:
        sink.setnchannels(channels)
        sink.setsampwidth(width)
        sink.setframerate(rate)
        sink.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_pcm_width_decodes_exactly(tmp_path: Path, width: int, channels: int) -> None:
    rng = np.random.default_rng(width * 10 + channels)
    bits = 8 * width
    if width == 1:
        raw = rng.integers(0, 256, size=(50, channels))
        expected = (raw - 128) / 128.0
    else:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        raw = rng.integers(low, high, size=(50, channels), endpoint=True)
        raw[0, 0], raw[1, 0] = low, high  # the extremes
        expected = raw / float(1 << (bits - 1))
    write_wav(tmp_path / "x.wav", raw, width)
    samples, rate, found_bits = read_wav(tmp_path / "x.wav")
    assert (rate, found_bits, tuple(samples.shape)) == (8000, bits, (channels, 50))
    np.testing.assert_allclose(samples.numpy(), expected.T.astype(np.float32), rtol=0, atol=0)


def _channel_means(report: dict, count: int) -> list[list[float]]:
    """ChannelMeanNet's logits are gain * the channel means the model saw (plus a 0 logit)."""
    means = []
    for prediction in report["predictions"]:
        top = {c["index"]: c["probability"] for c in prediction["top"]}
        means.append([math.log(top[i] / top[count]) / 4.0 for i in range(count)])
    return means


def test_the_model_sees_the_file_values_and_stereo_is_mixed_down(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    mono = rng.integers(-3000, 3000, size=(400, 1))
    stereo = rng.integers(-3000, 3000, size=(400, 2))
    write_wav(tmp_path / "a.wav", mono, 2)
    write_wav(tmp_path / "b.wav", stereo, 2)
    out = tmp_path / "r.json"
    code = main([MEAN_NET, "--model-arg", "channels=1", "--model-arg", "dims=1", str(tmp_path / "a.wav"),
                 str(tmp_path / "b.wav"), "--device", "cpu", "-q", "-o", str(tmp_path / "r.html"), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    seen = _channel_means(report, 1)
    assert seen[0][0] == pytest.approx(mono.mean() / 32768, abs=1e-5)
    assert seen[1][0] == pytest.approx(stereo.mean() / 32768, abs=1e-5)  # the mean of both channels
    assert any("8000 Hz" in note and ".wav" in note for note in report["notes"])
    assert any("mixed down" in note and "b.wav" in note for note in report["notes"])


def test_bad_files_and_rates_are_one_line(tmp_path: Path, capsys) -> None:
    write_wav(tmp_path / "a.wav", np.zeros((10, 1), dtype=int), 2, rate=8000)
    write_wav(tmp_path / "b.wav", np.zeros((10, 1), dtype=int), 2, rate=16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEnot really")
    base = [MEAN_NET, "--model-arg", "channels=1", "--model-arg", "dims=1", "--device", "cpu", "-q",
            "-o", str(tmp_path / "r.html")]
    cases = [
        ([str(tmp_path / "bad.wav")], "cannot read"),
        ([str(tmp_path / "a.wav"), str(tmp_path / "b.wav")], "different rates"),
        ([str(tmp_path / "b.wav"), "--sample-rate", "8000"], "16000 Hz, not the 8000 Hz"),
    ]
    for extra, message in cases:
        code = main([*base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(ReportError, match="cannot read"):
        read_wav(tmp_path / "bad.wav")


def test_the_audio_example(tmp_path: Path) -> None:
    """The README's `sh examples/audio_tones.sh`: tones written, a Conv1d model trained, the report
    over the .wav files gets every one right."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(["sh", "examples/audio_tones.sh"], cwd=root, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OUT=str(tmp_path / "tones"), OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "12/12 correct"
    report = json.loads((tmp_path / "tones" / "report.json").read_text())
    assert [p["true_label"] for p in report["predictions"]] == ["high"] * 4 + ["low"] * 4 + ["mid"] * 4
