"""Scale-out targets of the torchrun issue, on image files (whole processes, wall and peak RSS).

- weak scaling: ResNet-18 over N files of 224x224, 2 ranks of one thread each (torchrun) against
  1 rank of one thread: throughput ratio (target >= 1.7x);
- dataset overhead: the default report over N files against a plain loop that decodes the same
  files with the same number of decoding threads and runs the forward under inference mode
  (target <= 1.15x);
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
import sys, time, torch, torchvision
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
from torchvision.transforms import functional as F
files, workers, batch = sys.argv[1:-2], int(sys.argv[-2]), int(sys.argv[-1])
torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
def load(path):
    image = Image.open(path).convert("RGB")
    return F.normalize(F.to_tensor(F.center_crop(F.resize(image, 256), 224)), mean, std)
pool = ThreadPoolExecutor(max(1, workers)) if workers else None
with torch.inference_mode():
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        tensors = list(pool.map(load, chunk)) if pool else [load(p) for p in chunk]
        model(torch.stack(tensors))
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
    parser.add_argument("--workers", type=int, default=1, help="decoding threads (report and plain loop)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reportgen-scale-"))
    try:
        n = args.inputs
        files = images(work / "ds", n)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
        report = ["-m", "reportgen", "torchvision:resnet18", "--dataset", str(work / "ds"), "--device", "cpu",
                  "-q", "--workers", str(args.workers), "-o"]
        one, one_rss = timed([sys.executable, *report, str(work / "one.html")], env)
        two, two_rss = timed([shutil.which("torchrun") or "torchrun", "--standalone", "--nproc-per-node", "2",
                              *report, str(work / "two.html")], env)
        print(f"weak scaling, ResNet-18, {n} files, 1 thread per rank: 1 rank {one:.1f} s, 2 ranks {two:.1f} s: "
              f"{one / two:.2f}x throughput (target >= 1.7x)")
        env_all = dict(env)
        env_all.pop("OMP_NUM_THREADS")
        full, _ = timed([sys.executable, *report, str(work / "full.html")], env_all)
        plain, _ = timed([sys.executable, "-c", PLAIN_LOOP, *map(str, files), str(args.workers), "16"], env_all)
        print(f"dataset overhead, {n} files, --workers {args.workers}: report {full:.1f} s, plain loop {plain:.1f} s: "
              f"{full / plain:.2f}x (target <= 1.15x)")
        images(work / "ds", 4 * n)
        _, big_rss = timed([shutil.which("torchrun") or "torchrun", "--standalone", "--nproc-per-node", "2",
                            *report, str(work / "big.html")], env)
        print(f"peak RSS of the largest rank, {n} vs {4 * n} files: {two_rss / 1024:.0f} vs {big_rss / 1024:.0f} MiB: "
              f"{big_rss / two_rss:.2f}x (target <= 1.1x); one rank at {n}: {one_rss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
