#!/bin/sh
# A small Conv1d model on generated tones, read from .wav files (examples/audio_tones.py):
#
#   sh examples/audio_tones.sh   # writes out/audio-tones.html and .json
#
# 8 tones (4 "low", 4 "high"), 16-bit mono PCM at 8 kHz; the true class is in each file name.
# Expected: 8/8 correct, each input drawn as a waveform and a spectrogram.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-out/audio-tones}  # out/ is git-ignored
python examples/audio_tones.py "$OUT"
reportgen examples/audio_tones.py:build --weights "$OUT/tones.pt" "$OUT/wav" --sample-rate 8000 \
    --labels "$OUT/labels.txt" --label-pattern '_(low|high)\.wav$' -o "$OUT.html" --json "$OUT.json"
