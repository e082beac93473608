"""What `reportgen compare` costs next to one report, and that its memory is flat in the inputs.

    python benchmarks/compare_cost.py                     # resnet18, 64 and 512 inputs of 64x64
    python benchmarks/compare_cost.py --ns 64,512 --size 64 --repeat 3 --reportgen "python -m reportgen"

Writes max(N) seeded SIZE x SIZE PNGs (inputs.py), two random-init torchvision ResNet-18
state_dicts (seeds 0 and 1), and per N (each its own folder of the first N PNGs, hard links)
runs, alternately and in flipped order every repetition:

* REPORT:  `reportgen torchvision:MODEL --weights a.pt DIR -o r.html -q`
* COMPARE: `reportgen compare torchvision:MODEL --weights a.pt --weights b.pt DIR -o c.html -q`

and prints median wall time and peak RSS (harness.run_child: whole processes), the ratio
COMPARE / REPORT at the smallest N (target: at most 2.3) and COMPARE's peak RSS ratio between
the largest and the smallest N (target: at most 1.15). Exit status 1 if a run fails or a target
is missed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from harness import ChildResult, fmt_mib, log, reportgen_cmd, run_child, write_inputs

WEIGHTS = """
import sys, torch, torchvision
for seed, path in ((0, sys.argv[2]), (1, sys.argv[3])):
    torch.manual_seed(seed)
    torch.save(getattr(torchvision.models, sys.argv[1])().state_dict(), path)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="64,512", help="input counts (default 64,512)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reportgen", help="command that starts reportgen (default: harness.reportgen_cmd)")
    parser.add_argument("--max-ratio", type=float, default=2.3)
    parser.add_argument("--max-memory-ratio", type=float, default=1.15)
    args = parser.parse_args()
    command = shlex.split(args.reportgen) if args.reportgen else reportgen_cmd()
    counts = sorted(int(n) for n in args.ns.split(","))
    with tempfile.TemporaryDirectory(prefix="compare-cost-") as temp:
        root = Path(temp)
        pngs = write_inputs(root / "all", counts[-1], args.size)
        folders = {}
        for n in counts:
            folder = root / f"n{n}"
            folder.mkdir()
            for path in pngs[:n]:
                os.link(path, folder / path.name)
            folders[n] = folder
        made = run_child([sys.executable, "-c", WEIGHTS, args.model, str(root / "a.pt"), str(root / "b.pt")])
        if not made.ok:
            log(f"writing the weights failed: {made.error_line()}")
            return 1
        spec = f"torchvision:{args.model}"
        common = ["--device", args.device, "-q", "--max-size", "0"]
        runs: dict[tuple[str, int], list[ChildResult]] = {}
        for repeat in range(args.repeat):
            for n in counts:
                jobs = [("report", [*command, spec, "--weights", str(root / "a.pt"), str(folders[n]), "-o",
                                    str(root / "r.html"), *common]),
                        ("compare", [*command, "compare", spec, "--weights", str(root / "a.pt"), "--weights",
                                     str(root / "b.pt"), str(folders[n]), "-o", str(root / "c.html"), *common])]
                if repeat % 2:
                    jobs.reverse()
                for name, argv in jobs:
                    result = run_child(argv, timeout_s=1800)
                    if not result.ok:
                        log(f"{name} on {n} inputs failed: {result.error_line()}")
                        return 1
                    runs.setdefault((name, n), []).append(result)
                    log(f"{name:8s} n={n:4d} {result.wall_s:7.2f} s {fmt_mib(result.peak_rss_bytes)}")
    print("| run | inputs | median wall (s) | median peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    wall, rss = {}, {}
    for (name, n), results in sorted(runs.items()):
        wall[name, n] = statistics.median(r.wall_s for r in results)
        rss[name, n] = statistics.median(r.peak_rss_bytes for r in results)
        print(f"| {name} | {n} | {wall[name, n]:.2f} | {fmt_mib(rss[name, n])} |")
    ratio = wall["compare", counts[0]] / wall["report", counts[0]]
    memory = rss["compare", counts[-1]] / rss["compare", counts[0]]
    print(f"\ncompare / report wall time at {counts[0]} inputs: {ratio:.2f} (target <= {args.max_ratio})")
    print(f"compare peak RSS {counts[-1]} / {counts[0]} inputs: {memory:.3f} (target <= {args.max_memory_ratio})")
    return 0 if ratio <= args.max_ratio and memory <= args.max_memory_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
