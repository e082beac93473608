#!/bin/sh
# A Conv1d model on .wav files, end to end: tones written and a small model trained in seconds
# (examples/audio_tones.py), then the report over the 12 .wav files, 4 per class.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-out/tones}  # out/ is git-ignored
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 examples/audio_tones.py "$OUT"
printf 'low\nmid\nhigh\n' > "$OUT/labels.txt"
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 -m reportgen examples/audio_tones.py:tone_net \
    --weights "$OUT/tones.pt" --dataset "$OUT/wav" --labels "$OUT/labels.txt" --sample-rate 8000 \
    -o "$OUT/report.html" --json "$OUT/report.json" --quiet
python3 examples/accuracy.py "$OUT/report.json"
