"""Scale-out targets of the torchrun issue, on image files (whole processes, wall and peak RSS).

- weak scaling: ResNet-18, N files of 224x224 per rank, 2 ranks of one thread each (torchrun, 2N
  files) against 1 rank of one thread (N files): throughput ratio (target >= 1.7x); decoding
  on each rank's own thread (--workers 0), so each rank is one thread;
- strong scaling, for the record: the same N files on 2 ranks against 1;
- dataset overhead: the default report over N files against a plain loop that decodes the same
  files in the same number of DataLoader worker processes and runs the forward under inference
  mode (target <= 1.15x);
- peak RSS of the largest rank, N vs 4N inputs (target <= 1.1x).

    python benchmarks/scale_out.py                # N = 512
    python benchmarks/scale_out.py --inputs 128   # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PLAIN_LOOP = '''
import sys, torch, torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as F
files, workers, batch = sys.argv[1:-2], int(sys.argv[-2]), int(sys.argv[-1])
torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
def load(path):
    image = Image.open(path).convert("RGB")
    return F.normalize(F.to_tensor(F.center_crop(F.resize(image, 256), 224)), mean, std)
with torch.inference_mode():
    for tensors in DataLoader(files, batch_size=batch, num_workers=workers, collate_fn=lambda paths: torch.stack([load(p) for p in paths])):
        model(tensors)
'''


def images(folder: Path, count: int) -> list[Path]:
    (folder / "all").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / "all" / f"{i:05d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and the peak RSS (KiB) of the largest process the command waited for."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stderr[-2000:]}")
    return wall, int(result.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="decoding worker processes (report and plain loop)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reportgen-scale-"))
    try:
        n = args.inputs
        images(work / "ds", n)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
        torchrun = [shutil.which("torchrun") or "torchrun", "--standalone", "--nproc-per-node", "2"]

        def report(folder: str, workers: int, out: str) -> list[str]:
            return ["-m", "reportgen", "torchvision:resnet18", "--dataset", str(work / folder), "--device", "cpu",
                    "-q", "--workers", str(workers), "-o", str(work / out)]

        one, one_rss = timed([sys.executable, *report("ds", 0, "one.html")], env)
        two, two_rss = timed([*torchrun, *report("ds", 0, "two.html")], env)
        images(work / "ds2", 2 * n)
        weak, _ = timed([*torchrun, *report("ds2", 0, "weak.html")], env)
        print(f"weak scaling, ResNet-18, {n} files per rank, 1 thread per rank: 1 rank {one:.1f} s for {n}, "
              f"2 ranks {weak:.1f} s for {2 * n}: {2 * n / weak / (n / one):.2f}x throughput (target >= 1.7x)")
        print(f"strong scaling, the same {n} files: 1 rank {one:.1f} s, 2 ranks {two:.1f} s: {one / two:.2f}x")
        env_all = dict(env)
        env_all.pop("OMP_NUM_THREADS")
        full, _ = timed([sys.executable, *report("ds", args.workers, "full.html")], env_all)
        files = sorted(str(p) for p in (work / "ds" / "all").glob("*.png"))
        plain, _ = timed([sys.executable, "-c", PLAIN_LOOP, *files, str(args.workers), "16"], env_all)
        print(f"dataset overhead, {n} files, --workers {args.workers}: report {full:.1f} s, plain loop {plain:.1f} s: "
              f"{full / plain:.2f}x (target <= 1.15x)")
        images(work / "ds", 4 * n)
        _, big_rss = timed([*torchrun, *report("ds", 0, "big.html")], env)
        print(f"peak RSS of the largest rank, {n} vs {4 * n} files: {two_rss / 1024:.0f} vs {big_rss / 1024:.0f} MiB: "
              f"{big_rss / two_rss:.2f}x (target <= 1.1x); one rank at {n}: {one_rss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
