"""Peak memory of reportgen against the number of inputs: it must stay flat.

    python benchmarks/dataset_memory.py                       # K = 100, 500, 2000
    python benchmarks/dataset_memory.py --ks 100,1000 --model resnet50 --size 96
    python benchmarks/dataset_memory.py --extra "--batch-size 64" --max-ratio 1.15

Writes max(K) seeded SIZE x SIZE PNGs (inputs.py) once, gives each K its own folder holding the
first K of them (hard links), runs
`reportgen torchvision:MODEL DIR --input-shape 3,SIZE,SIZE -o OUT.html -q [EXTRA]` per K and
prints wall time, peak RSS and report size per K, and the peak RSS ratio max/min. Repetitions
are interleaved over the K values; medians are shown. Raw numbers go to
benchmarks/results/dataset_memory.json. Exit status 1 if a run fails or the ratio exceeds
--max-ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from harness import BENCH_DIR, ChildResult, fmt_mib, log, reportgen_cmd, run_child, write_inputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--ks", default="100,500,2000", help="input counts (default 100,500,2000)")
    parser.add_argument("--model", default="resnet18", help="torchvision model (default resnet18)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions per K (default 1)")
    parser.add_argument("--extra", default="", help="more reportgen options, one shell string")
    parser.add_argument("--reportgen", metavar="CMD", help="command that starts reportgen")
    parser.add_argument("--max-ratio", type=float, help="fail if peak RSS max/min exceeds this")
    parser.add_argument("--timeout", type=float, default=1800, help="per-process limit, seconds")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "dataset_memory.json")
    args = parser.parse_args()
    try:
        args.ks = sorted({int(k) for k in args.ks.split(",")})
    except ValueError:
        parser.error(f"--ks must be comma-separated integers, got {args.ks!r}")
    if not args.ks or args.ks[0] < 1 or args.repeat < 1:
        parser.error("--ks values and --repeat must be positive")
    return args


def link_first(images: list[Path], k: int, directory: Path) -> None:
    """Fill `directory` with the first k images, as hard links (copies where links fail)."""
    directory.mkdir()
    for image in images[:k]:
        try:
            os.link(image, directory / image.name)
        except OSError:
            shutil.copy2(image, directory / image.name)


def main() -> int:
    args = parse_args()
    command = shlex.split(args.reportgen) if args.reportgen else reportgen_cmd()
    runs: dict[int, list[ChildResult]] = {k: [] for k in args.ks}
    sizes: dict[int, int | None] = {}
    with tempfile.TemporaryDirectory(prefix="reportgen-dataset-") as tmp:
        work = Path(tmp)
        log(f"writing {args.ks[-1]} seeded {args.size}x{args.size} PNGs")
        images = write_inputs(work / "all", args.ks[-1], args.size)
        for k in args.ks:
            link_first(images, k, work / f"k{k}")
        failed = False
        for rep in range(args.repeat):
            for k in args.ks if rep % 2 == 0 else args.ks[::-1]:
                out = work / f"k{k}.html"
                out.unlink(missing_ok=True)
                argv = [
                    *command,
                    f"torchvision:{args.model}",
                    str(work / f"k{k}"),
                    "--input-shape",
                    f"3,{args.size},{args.size}",
                    "-o",
                    str(out),
                    "-q",
                    *shlex.split(args.extra),
                ]
                result = run_child(argv, timeout_s=args.timeout)
                runs[k].append(result)
                sizes[k] = out.stat().st_size if out.exists() else None
                log(
                    f"  rep {rep + 1}/{args.repeat} K={k}: {result.wall_s:.1f} s, "
                    f"{fmt_mib(result.peak_rss_bytes)}"
                )
                if not result.ok:
                    log(f"  FAILED: {result.error_line()}")
                    failed = True
                    break
            if failed:
                break

    measured = [k for k in args.ks if runs[k] and all(r.ok for r in runs[k])]
    rss = {k: statistics.median(r.peak_rss_bytes for r in runs[k]) for k in measured}
    wall = {k: statistics.median(r.wall_s for r in runs[k]) for k in measured}
    print(f"reportgen torchvision:{args.model}, {args.size}x{args.size} PNGs {args.extra}".rstrip())
    print(f"{'K':>6}  {'wall':>9}  {'peak RSS':>10}  {'report':>10}")
    for k in args.ks:
        if k not in measured:
            failure = next((r for r in runs[k] if not r.ok), None)
            print(f"{k:>6}  FAILED: {failure.error_line()}" if failure else f"{k:>6}  not run")
            continue
        size = sizes.get(k)
        size_text = f"{size / 1024**2:.1f} MiB" if size is not None else "-"
        print(f"{k:>6}  {wall[k]:>7.1f} s  {fmt_mib(rss[k]):>10}  {size_text:>10}")
    ratio = max(rss.values()) / min(rss.values()) if len(rss) == len(args.ks) else None
    if ratio is not None:
        limit = f" (limit {args.max_ratio:.2f}x)" if args.max_ratio else ""
        print(f"peak RSS max/min: {ratio:.2f}x{limit}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": args.model,
        "size": args.size,
        "extra": args.extra,
        "ratio_max_min": ratio,
        "runs": {
            str(k): [
                {
                    "wall_s": round(r.wall_s, 4),
                    "peak_rss_bytes": r.peak_rss_bytes,
                    "rc": r.returncode,
                }
                for r in runs[k]
            ]
            for k in args.ks
        },
        "report_bytes": {str(k): sizes.get(k) for k in args.ks},
    }
    args.json.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    too_big = ratio is not None and args.max_ratio is not None and ratio > args.max_ratio
    return 1 if ratio is None or too_big else 0


if __name__ == "__main__":
    sys.exit(main())
