"""What the CLI does once its arguments are parsed: load, build, save, say where."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from reportgen.errors import ReportError

T = TypeVar("T")

if TYPE_CHECKING:
    import torch

    from reportgen.impact import ImpactOptions
    from reportgen.inputs import InputSet
    from reportgen.models import LoadedModel
    from reportgen.preprocess import Preprocessing
    from reportgen.report import Report


def run_cli(args: argparse.Namespace, command: str) -> int:
    from reportgen.api import ReportOptions, build_report

    output = Path(args.output or ("demo-report.html" if _is_demo(args) else "report.html"))
    json_path = Path(args.json) if args.json else None
    _check_output(output, "-o")
    if json_path is not None:
        _check_output(json_path, "--json")
    images_dir = Path(args.images) if getattr(args, "images", None) else None
    tensorboard_dir = Path(args.tensorboard) if getattr(args, "tensorboard", None) else None
    _check_exports(images_dir, tensorboard_dir)

    def sources() -> tuple[LoadedModel, InputSet, Any]:
        loaded, inputs = _demo_sources() if _is_demo(args) else _user_sources(args)
        _check_not_overwriting(args, output, json_path, inputs)
        if not args.labels:
            return loaded, inputs, None
        from reportgen.labels import read_labels

        return loaded, inputs, read_labels(args.labels)

    loaded, inputs, class_names = agreed(join_torchrun(args), sources)

    options = ReportOptions(
        layers=tuple(args.layers),
        device=args.device,
        batch_size=loaded.batch_size or args.batch_size,  # an exported program fixes its batch
        workers=getattr(args, "workers", None),
        max_channels=args.max_channels,
        tile_size=args.tile_size,
        max_inputs_shown=args.max_inputs_shown,
        filter_scale=args.filter_scale,
        tap=args.tap,
        title=args.title,
        command=command,
        show_progress=not args.quiet,
        max_size_mb=getattr(args, "max_size", ReportOptions.max_size_mb),
        impact=impact_options(args),
        seed=getattr(args, "seed", ReportOptions.seed),
        **insight_options(args),
    )
    try:
        report = build_report(loaded, inputs, options, class_names=class_names)
    finally:
        from reportgen import distributed

        distributed.stop()  # under torchrun: every rank leaves the group once the passes are done
    if report is None:  # a rank other than 0 under torchrun: rank 0 writes and prints
        return 0
    _save_with_exports(report, output, json_path, images_dir, tensorboard_dir)
    size = output.stat().st_size
    if not args.quiet:
        print(f"reportgen: {len(inputs)} input(s), {len(report.model.sections)} layer(s) drawn, "
              f"{size / 1e6:.2f} MB", file=sys.stderr)
        if report.model.budget is not None:
            print(f"reportgen: {report.model.budget.message}", file=sys.stderr)
    print(output)
    if json_path is not None:
        print(json_path)
    if getattr(args, "open", False):
        import webbrowser

        webbrowser.open(output.resolve().as_uri())
    return 0


def join_torchrun(args: argparse.Namespace) -> Any:
    """Under torchrun, the process group, joined before anything is loaded, so that a failure
    anywhere is said once, by rank 0 (`Group.agree`); None in a single process."""
    from reportgen import distributed

    if not distributed.under_torchrun():
        return None
    from reportgen.devices import resolve_device

    return distributed.start(distributed.device_for(resolve_device(args.device)))


def agreed(group: Any, load: Callable[[], T]) -> T:
    """`load()`; under torchrun every rank first learns whether every rank managed, so that a
    failure anywhere is said once, by rank 0 (`Group.agree`)."""
    if group is None:
        return load()
    try:
        found = load()
    except Exception as exc:
        group.agree(exc)
        raise  # agree raised already on every rank; kept for the type checker
    group.agree(None)
    return found


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


def insight_options(args: argparse.Namespace) -> dict[str, object]:
    """--top-k, --top-k-channels, --no-cam, --cam-layer, --no-rollout, --rollout-heads, --no-embedding
    and the alert thresholds
    (insight.py, alerts.py), as ReportOptions keyword arguments."""
    from reportgen.alerts import AlertThresholds

    return {
        "top_k": getattr(args, "top_k", 5),
        "top_k_channels": getattr(args, "top_k_channels", 8),
        "cam": getattr(args, "cam", True),
        "cam_layer": getattr(args, "cam_layer", None),
        "rollout": getattr(args, "rollout", True),
        "rollout_heads": getattr(args, "rollout_heads", "mean"),
        "embedding": getattr(args, "embedding", True),
        "thresholds": AlertThresholds(
            dead_fraction=getattr(args, "dead_threshold", 0.0),
            duplicate_cosine=getattr(args, "duplicate_threshold", 0.99),
            explode=getattr(args, "explode_threshold", 1e4),
        ),
    }


def impact_options(args: argparse.Namespace) -> ImpactOptions | None:
    """--ablation, --misfiring, --probes and their bounds (impact.py); None when none is asked for."""
    if not any(getattr(args, name, None) for name in ("ablation", "misfiring", "probes", "probe_strength")):
        return None  # without importing the impact modules (~60 ms) for a report that has none
    from reportgen.impact import ImpactOptions
    from reportgen.probes import parse_kinds, parse_strength

    options = ImpactOptions(
        ablation=bool(getattr(args, "ablation", False)),
        ablation_layers=tuple(getattr(args, "ablation_layers", None) or ()),
        ablation_max_channels=getattr(args, "ablation_max_channels", 16),
        misfiring=bool(getattr(args, "misfiring", False)),
        probes=parse_kinds(getattr(args, "probes", None) or ""),
        probe_strength=parse_strength(getattr(args, "probe_strength", None)),
        fgsm_epsilon=getattr(args, "fgsm_epsilon", 0.03),
    )
    return options if options.enabled else None


def _is_demo(args: argparse.Namespace) -> bool:
    return args.model == "demo" and not Path("demo").exists()


def _check_output(path: Path, option: str) -> None:
    """Before any work: the folder exists and takes a new file (write.check_writable)."""
    from reportgen.write import check_writable

    check_writable(path, option)


def _demo_sources(count: int = 8) -> tuple[LoadedModel, InputSet]:
    from reportgen import demo
    from reportgen.inputs import from_tensor
    from reportgen.models import LoadedModel
    from reportgen.preprocess import Preprocessing

    model = demo.load_demo_model()
    images, labels, names = demo.demo_samples(count)
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
        kind="demo",
    )
    return loaded, inputs


def _normalise_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    import torch

    return torch.stack([prep.normalise(image) for image in images])


def _user_sources(args: argparse.Namespace) -> tuple[LoadedModel, InputSet]:
    from reportgen.models import load_model, parse_model_args

    loaded = load_model(
        args.model,
        weights=args.weights,
        model_args=parse_model_args(args.model_arg),
        trust_pickle=args.trust_pickle,
        seed=args.seed,
        weights_key=getattr(args, "weights_key", None),
        weights_partial=getattr(args, "weights_partial", False),
    )
    refuse_multi_input(loaded)
    return loaded, load_inputs(args, loaded)


def load_inputs(args: argparse.Namespace, loaded: LoadedModel) -> InputSet:
    """INPUT ..., --dataset, --label-pattern or synthetic probes, preprocessed for `loaded` (its
    own preprocessing, overridden option by option); may name `loaded`'s classes from --dataset."""
    from reportgen.clips import DEFAULT_FRAMES
    from reportgen.inputs import (
        apply_label_pattern,
        check_image_channels,
        concatenate,
        layout_of,
        load_clip_folders,
        load_dataset,
        load_paths,
        probe_shape,
        synthetic_probes,
    )
    from reportgen.labels import read_labels

    layout = layout_of(loaded.module)
    prep = _preprocessing(args, loaded.preprocessing, layout.channels)
    given_names = read_labels(args.labels) if args.labels else None
    dataset = getattr(args, "dataset", None)
    label_pattern = getattr(args, "label_pattern", None)
    if dataset and label_pattern:
        raise ReportError("--dataset already labels its inputs by folder; drop --label-pattern")
    sets = []
    if dataset:
        labelled = load_dataset(dataset, prep, class_names=given_names or loaded.class_names,
                                names_given=given_names is not None, strict=getattr(args, "strict", False))
        if labelled.class_names and given_names is None:
            loaded.class_names = labelled.class_names
        sets.append(labelled)
    # a (C, T, H, W) model's clip length: --input-shape C,T,H,W, else clips.DEFAULT_FRAMES
    frames = args.input_shape[1] if args.input_shape and len(args.input_shape) == 4 else DEFAULT_FRAMES
    if args.inputs:
        sets.append(load_paths(args.inputs, prep, layout, strict=getattr(args, "strict", False),
                               sample_rate=getattr(args, "sample_rate", None), clip_frames=frames))
    if getattr(args, "clip", None):
        check_image_channels(prep, layout, clips=True)
        sets.append(load_clip_folders(args.clip, prep, frames))
    if sets:
        inputs = concatenate(sets)
    else:
        shape, how = probe_shape(loaded.module, hint=args.input_shape or loaded.input_shape)
        inputs = synthetic_probes(tuple(shape), seed=args.seed)
        if how == "given":
            how = "from --input-shape" if args.input_shape else "from the weights' metadata"
        inputs.notes.append(f"Probe shape {'x'.join(map(str, shape))}: {how}.")
    if label_pattern:
        apply_label_pattern(inputs, label_pattern, given_names or loaded.class_names)
    return inputs


def refuse_multi_input(loaded: LoadedModel) -> None:
    """The CLI feeds one tensor per call; a forward with more required inputs (or one dict)
    needs the Python API's `forward_args`."""
    import inspect

    try:
        signature = inspect.signature(loaded.module.forward)
    except (TypeError, ValueError):
        return
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    required = [p for p in signature.parameters.values() if p.kind in kinds and p.default is p.empty]
    dict_input = len(required) == 1 and str(required[0].annotation).replace("typing.", "").startswith(
        ("dict", "Dict", "Mapping", "collections.abc.Mapping"))
    if len(required) > 1 or dict_input:
        what = f"{len(required)} inputs ({', '.join(p.name for p in required)})" if len(required) > 1 \
            else f"a dict ({required[0].name}: {required[0].annotation})"
        raise ReportError(
            f"{loaded.name}.forward takes {what}, but the command line feeds it one tensor; use the Python "
            "API: reportgen.generate_report(model, inputs, forward_args=lambda batch: (batch, ...))"
        )


def _preprocessing(args: argparse.Namespace, base: Preprocessing | None, channels: int | None) -> Preprocessing:
    """The weights' own preprocessing (if known), overridden option by option."""
    from dataclasses import replace

    from reportgen.preprocess import DEFAULT_SOURCE, IMAGE_CHANNELS, Preprocessing

    target = channels if channels in IMAGE_CHANNELS else None
    prep = base or Preprocessing(channels=target, source=DEFAULT_SOURCE)
    if base is not None and target is not None and base.channels != target:
        prep = replace(prep, channels=target)
    changes: dict[str, object] = {}
    if args.resize:
        if len(args.resize) > 2:
            raise ReportError(f"--resize wants H,W or one number (the shorter side), got {len(args.resize)} numbers")
        changes["resize"] = args.resize
    if args.center_crop:
        if len(args.center_crop) > 2:
            raise ReportError(f"--center-crop wants H,W or one number, got {len(args.center_crop)} numbers")
        crop = args.center_crop
        changes["center_crop"] = (crop[0], crop[-1])
    if args.mean is not None:
        changes["mean"] = args.mean
    if args.std is not None:
        changes["std"] = args.std
    if args.grayscale:
        changes["grayscale"] = True
    if (args.mean is None) != (args.std is None) and not (base and base.mean):
        raise ReportError("--mean and --std go together")
    if changes:
        prep = replace(prep, options=prep.options | frozenset(changes), **changes)
    for option, values in (("--mean", prep.mean), ("--std", prep.std)):
        if values is not None and len(values) not in (1, prep.target_channels):
            raise ReportError(f"{option} has {len(values)} values but the model's input has "
                              f"{prep.target_channels} channel(s)")
    if prep.std is not None and any(v == 0 for v in prep.std):
        raise ReportError("--std values must not be 0")
    return prep
