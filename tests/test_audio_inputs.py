"""`.wav` inputs (issue 15): read with the standard library, exactly, or refused in one line."""

from __future__ import annotations

import json
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from reportgen.audio import read_wav
from reportgen.cli import main
from reportgen.errors import ReportError


def write_wav(path: Path, values: np.ndarray, bits: int, rate: int = 8000) -> Path:
    """`values`: (frames, channels) integers in the format's own range (8-bit: 0..255)."""
    width = bits // 8
    _, channels = values.shape
    if width == 1:
        data = values.astype(np.uint8).tobytes()
    else:
        little = values.astype("<i8").reshape(-1).view(np.uint8).reshape(-1, 8)[:, :width]
        data = np.ascontiguousarray(little).tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(data)
    return path


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_pcm_files_read_back_exactly(tmp_path, bits, channels):
    rng = np.random.default_rng(bits + channels)
    if bits == 8:
        values = rng.integers(0, 256, size=(50, channels))
        expected = (values - 128) / 128
    else:
        top = 1 << (bits - 1)
        values = rng.integers(-top, top, size=(50, channels))
        values[0] = -top  # the extremes, where sign extension goes wrong first
        values[1] = top - 1
        expected = values / top
    found = read_wav(write_wav(tmp_path / "a.wav", values, bits, rate=22050))
    assert found.rate == 22050 and found.bits == bits and found.samples.shape == (channels, 50)
    assert np.array_equal(found.samples, expected.T.astype(np.float32))


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ReportError, match=r"cannot read .*text\.wav: not an integer PCM \.wav file"):
        read_wav(tmp_path / "text.wav")
    good = write_wav(tmp_path / "good.wav", np.zeros((10, 1), dtype=int), 16)
    (tmp_path / "cut.wav").write_bytes(good.read_bytes()[:30])
    with pytest.raises(ReportError, match=r"cut\.wav"):
        read_wav(tmp_path / "cut.wav")


MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(1, 4, 5), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    """
)


def report(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    (tmp_path / "audio_model.py").write_text(MODEL)
    code = main([str(tmp_path / "audio_model.py") + ":build", *args, "-o", str(tmp_path / "r.html"),
                 "--json", str(tmp_path / "r.json"), "-q", "--device", "cpu"])
    return code, capsys.readouterr().err


def test_a_conv1d_model_reads_wav_files_as_it_would_the_samples(tmp_path, capsys):
    import torch

    tone = np.round(12000 * np.sin(np.arange(400) * 2 * np.pi * 440 / 8000)).astype(int)
    stereo = np.stack([tone, -tone // 2], axis=1)
    write_wav(tmp_path / "mono.wav", tone[:, None], 16)
    write_wav(tmp_path / "stereo.wav", stereo, 16)
    code, err = report(tmp_path, capsys, str(tmp_path / "mono.wav"), str(tmp_path / "stereo.wav"))
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    assert [item["shape"] for item in document["inputs"]] == [[1, 400], [1, 400]]
    from reportgen.models import load_factory

    model = load_factory(str(tmp_path / "audio_model.py"), "build", {}).module.eval()
    mono = torch.from_numpy((tone / 32768).astype(np.float32))[None]
    averaged = torch.from_numpy((stereo / 32768).astype(np.float32).mean(axis=1))[None]
    with torch.no_grad():
        expected = torch.softmax(model(torch.stack([mono, averaged])), dim=1)
    for prediction, probabilities in zip(document["predictions"], expected):
        assert prediction["top"][0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    html = (tmp_path / "r.html").read_text()
    assert "averaged to mono" in html and "16-bit PCM, 8000 Hz" in html
    assert html.count('class="spectrogram"') == 2


def test_a_sample_rate_mismatch_is_refused_in_one_line(tmp_path, capsys):
    write_wav(tmp_path / "a.wav", np.zeros((100, 1), dtype=int), 16, rate=8000)
    write_wav(tmp_path / "b.wav", np.zeros((100, 1), dtype=int), 16, rate=16000)
    code, err = report(tmp_path, capsys, str(tmp_path / "a.wav"), "--sample-rate", "16000")
    assert code == 2 and err.count("\n") == 1
    assert "a.wav is sampled at 8000 Hz but --sample-rate is 16000 Hz" in err
    code, err = report(tmp_path, capsys, str(tmp_path / "a.wav"), str(tmp_path / "b.wav"))
    assert code == 2 and err.count("\n") == 1 and "b.wav is sampled at 16000 Hz" in err


def test_a_tone_is_brightest_at_its_frequency_in_the_spectrogram():
    import torch

    from reportgen.thumbnails import spectrogram, spectrogram_fft

    rate, frequency = 8000, 1000
    tone = torch.sin(torch.arange(4000, dtype=torch.float64) * 2 * torch.pi * frequency / rate).float()
    assert spectrogram_fft(4000) == 256 and spectrogram_fft(40) is None
    picture = spectrogram(torch.stack([tone, tone]))
    assert picture is not None and picture.shape == (48, 4000 // 64 + 1, 3)  # 63 frames (hop 64, centred)
    # bin 1000 / 8000 * 256 = 32 of 129, pooled into rows 11 or 12 of 48, drawn bottom up
    brightest = int(picture[:, :, 1].astype(int).mean(axis=1).argmax())  # viridis: green rises with level
    assert brightest in (47 - 11, 47 - 12)
    assert spectrogram(torch.zeros(3, 8, 8)) is None  # images get none
