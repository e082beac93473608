"""What the CLI does once its arguments are parsed: load, build, save, say where."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from reportgen.errors import ReportError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from reportgen.inputs import InputSet
    from reportgen.models import LoadedModel
    from reportgen.preprocess import Preprocessing
    from reportgen.report import Report

DEFAULT_SHAPES = {1: (1024,), 2: (224, 224), 3: (16, 64, 64)}


def run_cli(args: argparse.Namespace, command: str) -> int:
    from reportgen.api import ReportOptions, build_report

    output = Path(args.output or ("demo-report.html" if _is_demo(args) else "report.html"))
    json_path = Path(args.json) if args.json else None
    _check_output(output)
    if json_path is not None:
        _check_output(json_path)
    images_dir = Path(args.images) if getattr(args, "images", None) else None
    tensorboard_dir = Path(args.tensorboard) if getattr(args, "tensorboard", None) else None
    _check_exports(images_dir, tensorboard_dir)

    if _is_demo(args):
        loaded, inputs = _demo_sources()
    else:
        loaded, inputs = _user_sources(args)
    _check_not_overwriting(args, output, json_path, inputs)

    class_names = None
    if args.labels:
        from reportgen.labels import read_labels

        class_names = read_labels(args.labels)

    options = ReportOptions(
        layers=tuple(args.layers),
        device=args.device,
        batch_size=args.batch_size,
        max_channels=args.max_channels,
        tile_size=args.tile_size,
        max_inputs_shown=args.max_inputs_shown,
        filter_scale=args.filter_scale,
        title=args.title,
        command=command,
        show_progress=not args.quiet,
        max_size_mb=getattr(args, "max_size", ReportOptions.max_size_mb),
    )
    report = build_report(loaded, inputs, options, class_names=class_names)
    _save_with_exports(report, output, json_path, images_dir, tensorboard_dir)
    size = output.stat().st_size
    if not args.quiet:
        print(f"reportgen: {len(inputs)} input(s), {len(report.model.sections)} layer(s) drawn, "
              f"{size / 1e6:.2f} MB", file=sys.stderr)
    print(output)
    if json_path is not None:
        print(json_path)
    if getattr(args, "open", False):
        import webbrowser

        webbrowser.open(output.resolve().as_uri())
    return 0


def _check_exports(images_dir: Path | None, tensorboard_dir: Path | None) -> None:
    """--images / --tensorboard mistakes fail before the forward pass, not after it."""
    from reportgen.exports import check_folder, check_tensorboard

    for folder, option in ((images_dir, "--images"), (tensorboard_dir, "--tensorboard")):
        if folder is not None:
            check_folder(folder, option)
    if tensorboard_dir is not None:
        check_tensorboard()


def _save_with_exports(report: Report, output: Path, json_path: Path | None, images_dir: Path | None,
                       tensorboard_dir: Path | None) -> None:
    """HTML, JSON and PNGs land together (atomically); TensorBoard events are removed if they fail."""
    from reportgen.exports import write_tensorboard

    events = write_tensorboard(report.model, tensorboard_dir) if tensorboard_dir is not None else []
    try:
        report.save(output, json_path=json_path, images_dir=images_dir)
    except BaseException:
        for event in events:
            event.unlink(missing_ok=True)
        raise


def _check_not_overwriting(args: argparse.Namespace, output: Path, json_path: Path | None, inputs: InputSet) -> None:
    """-o and --json must be two files, and neither may be an input, the model or its weights."""
    from reportgen.write import check_distinct

    sources = [Path(p) for p in inputs.paths if p] + [
        Path(p) for p in (args.model, args.weights, args.labels) if p and Path(p).is_file()
    ]
    check_distinct([output] + ([json_path] if json_path is not None else []), protected=sources)


def _is_demo(args: argparse.Namespace) -> bool:
    return args.model == "demo" and not Path("demo").exists()


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise ReportError(f"output path is a folder: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"output folder does not exist: {parent}")


def _demo_sources() -> tuple[LoadedModel, InputSet]:
    from reportgen import demo
    from reportgen.inputs import from_tensor
    from reportgen.models import LoadedModel
    from reportgen.preprocess import Preprocessing

    model = demo.load_demo_model()
    images, labels, names = demo.demo_samples()
    prep = Preprocessing(channels=3, mean=tuple(demo.DEMO_MEAN), std=tuple(demo.DEMO_STD), source="demo")
    inputs = from_tensor(_normalise_batch(images, prep), names)
    inputs.labels = list(labels)
    inputs.preprocessing = prep
    inputs.notes.append("Demo inputs: procedurally generated images, one or more per class.")
    loaded = LoadedModel(
        module=model,
        name="reportgen demo CNN",
        source="reportgen built-in demo checkpoint (trained by examples/train_demo_model.py)",
        class_names=list(demo.CLASS_NAMES),
    )
    return loaded, inputs


def _normalise_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    import torch

    return torch.stack([prep.normalise(image) for image in images])


def _user_sources(args: argparse.Namespace) -> tuple[LoadedModel, InputSet]:
    from reportgen.inputs import expand_paths, from_image_files, synthetic_probes
    from reportgen.models import load_model, parse_model_args
    from reportgen.preprocess import Preprocessing

    loaded = load_model(
        args.model,
        weights=args.weights,
        model_args=parse_model_args(args.model_arg),
        trust_pickle=args.trust_pickle,
    )
    channels = _first_conv_channels(loaded.module)
    prep = _preprocessing(args, loaded.preprocessing, channels)
    if args.inputs:
        inputs = from_image_files(expand_paths(args.inputs), prep)
    else:
        shape = args.input_shape or _probe_shape(loaded, channels)
        inputs = synthetic_probes(tuple(shape))
    return loaded, inputs


def _first_conv_channels(module: nn.Module) -> int | None:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            in_channels = getattr(sub, "in_channels", 0)
            return int(in_channels) if in_channels else None
    return None


def _probe_shape(loaded: LoadedModel, channels: int | None) -> tuple[int, ...]:
    from torch import nn

    if loaded.input_shape:
        return loaded.input_shape
    for sub in loaded.module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            dims = len(sub.kernel_size)
            return (channels or 3, *DEFAULT_SHAPES.get(dims, (224, 224)))
    raise ReportError("no inputs given and no conv layer to infer their shape from: pass --input-shape C,H,W")


def _preprocessing(args: argparse.Namespace, base: Preprocessing | None, channels: int | None) -> Preprocessing:
    from dataclasses import replace

    from reportgen.preprocess import Preprocessing

    prep = base or Preprocessing(channels=channels if channels in (1, 3) else 3)
    changes: dict[str, object] = {}
    if args.resize:
        changes["resize"] = args.resize
    if args.center_crop:
        crop = args.center_crop
        changes["center_crop"] = (crop[0], crop[-1])
    if args.mean is not None:
        changes["mean"] = args.mean
    if args.std is not None:
        changes["std"] = args.std
    if args.grayscale:
        changes["channels"] = 1
    if (args.mean is None) != (args.std is None) and not (base and base.mean):
        raise ReportError("--mean and --std go together")
    if changes:
        prep = replace(prep, source="options" if base is None else prep.source + " + options", **changes)
    return prep
