"""Accuracy straight from a report's JSON: prints "right/total correct", exits 1 unless all are.

    python3 examples/accuracy.py out/report.json
"""

import json
import sys

predictions = json.load(open(sys.argv[1], encoding="utf-8"))["predictions"]
right = sum(bool(p["correct"]) for p in predictions)
print(f"{right}/{len(predictions)} correct")
sys.exit(0 if right == len(predictions) else 1)
