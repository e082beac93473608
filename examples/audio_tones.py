"""A small Conv1d model that tells low, middle and high tones apart, trained in seconds on tones
this script writes as 16-bit mono .wav files (8 kHz, 0.25 s). Used by audio_tones.sh:

    python examples/audio_tones.py OUT_FOLDER     # writes OUT_FOLDER/wav/{low,mid,high}/*.wav and tones.pt
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np
import torch
from torch import nn

RATE = 8000
LENGTH = 2000  # samples: 0.25 s
CLASSES = ("low", "mid", "high")
BANDS = {"low": (150, 350), "mid": (700, 1100), "high": (1800, 2600)}  # Hz


def tone_net() -> nn.Module:
    """(1, 2000) audio -> 3 classes: two strided Conv1d layers, then global pooling."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 33, stride=4, padding=16), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, len(CLASSES)),
    )


def tone(frequency: float, phase: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(LENGTH) / RATE
    signal = 0.5 * np.sin(2 * np.pi * frequency * t + phase) + 0.05 * rng.standard_normal(LENGTH)
    return np.clip(signal, -1, 1)


def write_wav(path: Path, signal: np.ndarray) -> None:
    with wave.open(str(path), "wb") as sink:
        sink.setnchannels(1)
        sink.setsampwidth(2)
        sink.setframerate(RATE)
        sink.writeframes((np.round(signal * 32767).astype("<i2")).tobytes())


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    signals, labels = [], []
    for label, name in enumerate(CLASSES):
        low, high = BANDS[name]
        for _ in range(64):
            signals.append(tone(rng.uniform(low, high), rng.uniform(0, 2 * np.pi), rng))
            labels.append(label)
    x = torch.tensor(np.stack(signals), dtype=torch.float32)[:, None]
    y = torch.tensor(labels)
    model = tone_net()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):  # full-batch steps: a few seconds on a CPU
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    torch.save(model.state_dict(), out / "tones.pt")
    for name in CLASSES:  # 4 fresh tones per class, the inputs of the report
        (out / "wav" / name).mkdir(parents=True, exist_ok=True)
        low, high = BANDS[name]
        for k in range(4):
            write_wav(out / "wav" / name / f"{name}{k}.wav", tone(rng.uniform(low, high), rng.uniform(0, 2 * np.pi), rng))


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/tones")
    folder.mkdir(parents=True, exist_ok=True)
    main(folder)
