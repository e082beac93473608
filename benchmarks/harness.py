"""Shared plumbing for the benchmark scripts: run one child process and measure it.

Every measurement in benchmarks/ goes through `run_child`, so wall time and peak RSS mean the
same thing everywhere:

* wall time: `time.perf_counter()` from just before the child is spawned until `wait4` reaps it
  (interpreter start-up and imports included: we measure what a user waits for);
* CPU time: user + system time from the same rusage, recorded alongside (the targets are on
  wall time, but CPU time tells a slow run from a busy machine);
* peak RSS: the `ru_maxrss` that `os.wait4` returns for that one child. Linux reports the
  largest of the child's own peak and the peaks of the descendants it reaped (a maximum, not a
  sum), so a worker pool is seen through its biggest member. It is also never below the
  harness's own RSS when it spawned the child (the kernel keeps the pre-exec high-water mark),
  one more reason the harness stays small.

This module deliberately imports nothing heavy (no torch): the harness must not disturb the
machine it measures, and `run.py --only T6` has to work before torch is even installed.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
FLOOR_SCRIPT = BENCH_DIR / "floor.py"
CLASSIC_SCRIPT = BENCH_DIR / "classic_matplotlib.py"
INPUTS_SCRIPT = BENCH_DIR / "inputs.py"

MIB = 1024 * 1024
DEFAULT_TAIL_CHARS = 2000


@dataclass(frozen=True)
class ChildResult:
    """What one finished child process cost."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stderr_tail: str
    cpu_s: float = 0.0  # user + system CPU time: far less sensitive than wall to a busy machine

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """A one-line reason for a failure: the return code and the last stderr line."""
        lines = [line for line in self.stderr_tail.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "(no stderr)"
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}: {last}"
        return f"exit {self.returncode}: {last}"


def run_child(
    argv: Sequence[str],
    *,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    tail_chars: int | None = DEFAULT_TAIL_CHARS,
) -> ChildResult:
    """Run `argv` to completion and return its wall time, peak RSS, exit code and stderr tail.

    stdout is discarded; stderr goes to a temporary file (not a pipe, so a chatty child can
    never block on a full pipe while we sit in `wait4`). `tail_chars=None` keeps all of stderr.
    On timeout the child is killed and reported with the negative signal number (-9), like
    `subprocess` does. A command that cannot be started at all (missing executable) comes back
    as returncode 127 with the OSError as its stderr, never as an exception.
    """
    with tempfile.TemporaryFile(mode="w+b") as err:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        except OSError as exc:
            return ChildResult(
                time.perf_counter() - start, 0, 127, f"cannot start {argv[0]}: {exc}"
            )
        try:
            timed_out = not _wait_exit(proc.pid, timeout_s)
            if timed_out:
                proc.kill()
            # wait4, not Popen.wait: only wait4 hands back this child's own rusage.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C included: never leave an orphan behind.
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise
        wall_s = time.perf_counter() - start
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode  # tell Popen the child is reaped (no ResourceWarning)
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    if timed_out:
        stderr += f"\n[harness] timed out after {timeout_s:.0f} s and was killed"
    if tail_chars is not None:
        stderr = stderr[-tail_chars:]
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    cpu_s = usage.ru_utime + usage.ru_stime
    return ChildResult(wall_s, usage.ru_maxrss * scale, returncode, stderr, cpu_s)


def _wait_exit(pid: int, timeout_s: float | None) -> bool:
    """Block until `pid` has exited (without reaping it); False if `timeout_s` ran out first."""
    if timeout_s is None:
        return True  # the caller's blocking wait4 does the waiting
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        # No pidfd (macOS, old kernels): poll. 10 ms of slack is noise next to a timeout.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.01)
        return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def median_wall(results: Sequence[ChildResult]) -> float:
    return statistics.median(r.wall_s for r in results)


def median_rss(results: Sequence[ChildResult]) -> float:
    return statistics.median(r.peak_rss_bytes for r in results)


def python_cmd(script: Path, *args: object) -> list[str]:
    """Command line that runs one of the benchmark scripts with this interpreter."""
    return [sys.executable, str(script), *(str(a) for a in args)]


def reportgen_cmd() -> list[str]:
    """How to start reportgen: the console script if installed, else `python -m reportgen`.

    Children run with cwd=REPO_ROOT, so `python -m reportgen` finds the source tree even when
    the package is not installed.
    """
    script = shutil.which("reportgen")
    return [script] if script else [sys.executable, "-m", "reportgen"]


def compile_package(name: str = "reportgen", *, timeout_s: float | None = 300) -> Path | None:
    """Write the bytecode of the package `name` resolves to (without importing it); its folder.

    A wheel install compiles bytecode when it installs, and a plain interpreter writes it on
    the first import. An editable install under PYTHONDONTWRITEBYTECODE=1 (this project's CI
    machines set it) never has any, so every run would compile reportgen's sources again:
    about 0.15 s that no user pays. torch and torchvision, FLOOR's imports, come compiled by pip.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    result = run_child([sys.executable, "-m", "compileall", "-q", str(folder)], timeout_s=timeout_s)
    if not result.ok:
        raise RuntimeError(f"compiling {folder} failed: {result.stderr_tail}")
    return folder


def write_inputs(
    directory: Path, n: int, size: int, *, timeout_s: float | None = 600
) -> list[Path]:
    """Write the n seeded PNGs (see inputs.py) into `directory` and return their paths, sorted.

    Done in a child process so the harness itself never imports torch.
    """
    directory.mkdir(parents=True, exist_ok=True)
    result = run_child(python_cmd(INPUTS_SCRIPT, directory, n, size), timeout_s=timeout_s)
    if not result.ok:
        raise RuntimeError(f"writing {n} inputs of {size}px failed: {result.stderr_tail}")
    paths = sorted(directory.glob("*.png"))
    if len(paths) != n:
        raise RuntimeError(f"expected {n} PNGs in {directory}, found {len(paths)}")
    return paths


def fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.0f} MiB"


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the final table."""
    print(message, file=sys.stderr, flush=True)
