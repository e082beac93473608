"""What `reportgen compare` does once its arguments are parsed: load every model, the inputs,
compare, save, say where."""

from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path
from typing import Any

from reportgen.errors import ReportError

GLOB_CHARACTERS = re.compile(r"[*?\[]")
DEMO_COMPARE_INPUTS = 64  # demo images for `reportgen demo --compare`: CKA wants more than the report's 8


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """`epoch_2` before `epoch_10`: runs of digits compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]


def expand_weights(values: list[str]) -> list[str]:
    """Each --weights value; a glob (that is not itself a file) -> its matches, sorted naturally."""
    found: list[str] = []
    for value in values:
        if GLOB_CHARACTERS.search(value) and not Path(value).exists():
            matches = sorted(glob.glob(value), key=natural_key)
            if not matches:
                raise ReportError(f"--weights {value} matches no file")
            found.extend(matches)
        else:
            found.append(value)
    return found


def _names(weights: list[str]) -> list[str]:
    """A checkpoint's name on the page: its file name, or the path as given when two share one."""
    short = [Path(w).name if Path(w).name else w for w in weights]
    return short if len(set(short)) == len(short) else list(weights)


def run_demo_compare(args: argparse.Namespace, command: str) -> int:
    """`reportgen demo --compare`: the demo model's training run (demo.DEMO_RUN) on the demo inputs."""
    from reportgen import demo
    from reportgen.cli_run import _check_output, _demo_sources, _is_demo

    if not _is_demo(args):
        raise ReportError("--compare goes with MODEL `demo`; compare other models with `reportgen compare`")
    from reportgen.compare import CompareReportOptions, build_compare
    from reportgen.models import LoadedModel

    output = Path(args.output or "demo-compare.html")
    json_path = Path(args.json) if args.json else None
    _check_output(output, "-o")
    if json_path is not None:
        _check_output(json_path, "--json")
    _, inputs = _demo_sources(DEMO_COMPARE_INPUTS)
    loaded = [LoadedModel(module=demo.load_demo_model(file), name=name, class_names=list(demo.CLASS_NAMES),
                          source=f"reportgen built-in demo checkpoint {file} (examples/train_demo_model.py)",
                          kind="demo")
              for name, file in demo.DEMO_RUN]
    options = CompareReportOptions(device=args.device, batch_size=args.batch_size, tap=args.tap,
                                   title=args.title or "reportgen demo: the demo CNN along its training",
                                   command=command, show_progress=not args.quiet, max_size_mb=args.max_size,
                                   seed=args.seed)
    report = build_compare(loaded, inputs, options)
    return _finish(report, output, json_path, len(loaded), len(inputs), quiet=args.quiet)


def _finish(report: Any, output: Path, json_path: Path | None, models: int, inputs: int, *, quiet: bool) -> int:
    from reportgen import distributed

    distributed.stop()
    if report is None:  # under torchrun, a rank other than 0: rank 0 writes and prints
        return 0
    report.save(output, json_path=json_path)
    if not quiet:
        print(f"reportgen: compared {models} models on {inputs} input(s), "
              f"{output.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    print(output)
    if json_path is not None:
        print(json_path)
    return 0


def run_compare(args: argparse.Namespace, command: str) -> int:
    from reportgen.cli_run import _check_output, agreed, join_torchrun
    from reportgen.compare import CompareReportOptions, build_compare

    output = Path(args.output or "compare.html")
    json_path = Path(args.json) if args.json else None
    _check_output(output, "-o")
    if json_path is not None:
        _check_output(json_path, "--json")
    loaded, inputs, class_names = agreed(join_torchrun(args), lambda: _sources(args, output, json_path))
    options = CompareReportOptions(layers=tuple(args.layers), device=args.device, batch_size=args.batch_size,
                                   max_channels=args.max_channels, tap=args.tap, top_k=args.top_k, cam=args.cam,
                                   title=args.title, command=command, show_progress=not args.quiet,
                                   max_size_mb=args.max_size, seed=args.seed, workers=args.workers)
    report = build_compare(loaded, inputs, options, class_names=class_names)
    return _finish(report, output, json_path, len(loaded), len(inputs), quiet=args.quiet)


def _sources(args: argparse.Namespace, output: Path, json_path: Path | None) -> tuple[Any, Any, Any]:
    """The models, the inputs and the class names a comparison is asked for."""
    from reportgen.cli_run import load_inputs, refuse_multi_input
    from reportgen.models import load_model, parse_model_args
    from reportgen.write import check_distinct

    weights = expand_weights(list(args.weights))
    model_args = parse_model_args(args.model_arg)
    common = {"trust_pickle": args.trust_pickle, "seed": args.seed, "weights_key": args.weights_key}
    if args.against is not None:
        if len(weights) > 1:
            raise ReportError("with --against, --weights is model A's weights: give it once "
                              "(--against-weights for model B)")
        first = load_model(args.model, weights=weights[0] if weights else None, model_args=model_args, **common)
        second = load_model(args.against, weights=args.against_weights, trust_pickle=args.trust_pickle,
                            seed=args.seed)
        if first.name == second.name:
            first.name, second.name = f"A: {first.name}", f"B: {second.name}"
        loaded = [first, second]
    else:
        if args.against_weights is not None:
            raise ReportError("--against-weights goes with --against MODEL_B")
        if len(weights) < 2:
            raise ReportError(f"compare needs two checkpoints or more (--weights A --weights B, or a glob), "
                              f"got {len(weights)}; or compare two models with --against MODEL_B")
        loaded = []
        for path, name in zip(weights, _names(weights)):
            item = load_model(args.model, weights=path, model_args=model_args, **common)
            item.name = name
            loaded.append(item)
    for item in loaded:
        refuse_multi_input(item)
    inputs = load_inputs(args, loaded[0])
    sources = [Path(p) for p in inputs.paths if p] + [
        Path(p) for p in (args.model, args.against, args.against_weights, args.labels, *weights)
        if p and Path(p).is_file()]
    check_distinct([output] + ([json_path] if json_path is not None else []), protected=sources)
    class_names = None
    if args.labels:
        from reportgen.labels import read_labels

        class_names = read_labels(args.labels)
    return loaded, inputs, class_names
