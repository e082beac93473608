"""`generate_report`: the one entry point. The CLI is a thin shell over `build_report`."""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from reportgen._version import __version__
from reportgen.alerts import AlertThresholds
from reportgen import distributed
from reportgen.analyze import TAPS, AnalysisOptions, analyze
from reportgen.engine.prefetch import decoding_workers
from reportgen.insight import InsightOptions
from reportgen.devices import resolve_device
from reportgen.errors import ReportError
from reportgen.faults import copy_if_lazy
from reportgen.metadata import display_path
from reportgen.inputs import (
    InputLayout,
    InputSet,
    from_tensor,
    from_tensors,
    layout_of,
    load_paths,
    probe_shape,
    synthetic_probes,
)
from reportgen.labels import check_label_count
from reportgen.checkpoints import CheckpointUse
from reportgen.models import DEFAULT_SEED, MAX_SEED, LoadedModel, seeded
from reportgen.preprocess import DEFAULT_SOURCE, Preprocessing
from reportgen.progress import progress_bar
from reportgen.render import RenderOptions, render, render_sections, section_anchors, zoom_maps
from reportgen.report import Report
from reportgen.report_model import ModelInfo, RunInfo
from reportgen.rollout import HEAD_FUSIONS
from reportgen.tokens import transformer_blocks
from reportgen.size_budget import DEFAULT_MAX_SIZE_MB

if TYPE_CHECKING:
    from reportgen.impact import ImpactOptions


ZOOM_SHARE = 0.15  # of --max-size, at most, for the tile zoom's full-resolution maps


@dataclass(frozen=True)
class ReportOptions:
    """Every knob of a report, with the CLI's defaults."""

    layers: tuple[str, ...] = ()
    device: str = "auto"
    batch_size: int = 16
    workers: int | None = None  # decoding processes (None: engine.prefetch.default_workers(); 0: none)
    max_channels: int = 64
    tile_size: int = 32
    max_inputs_shown: int = 8
    filter_scale: str = "per-filter"
    tap: str = "activation"  # where each conv is observed: its activation site, or "conv" (raw output)
    title: str | None = None
    command: str | None = None
    show_progress: bool = False
    # batch -> the model's arguments, for models with several inputs or a dict input (API only).
    forward_args: Callable[[torch.Tensor], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    max_size_mb: float = DEFAULT_MAX_SIZE_MB  # 0: no limit; see size_budget.py
    impact: ImpactOptions | None = None  # ablation, misfiring filters, probes (impact.py)
    # insight (insight.py): statistics, alerts, Grad-CAM, top-k inputs per channel, embedding
    top_k: int = 5  # inputs kept per shown channel (crops drawn when inputs > max_inputs_shown); 0: off
    top_k_channels: int = 8  # channels per layer whose top-k crops are drawn
    cam: bool = True  # Grad-CAM for the shown inputs (classifiers)
    cam_layer: str | None = None  # default: the last convolution (or transformer block, gradcam.py)
    rollout: bool = True  # attention rollout (models with nn.MultiheadAttention)
    rollout_heads: str = "mean"  # heads fused by "mean" or "max"
    embedding: bool = True  # PCA of the penultimate features
    thresholds: AlertThresholds = AlertThresholds()
    # Seeds torch's RNG for the passes (a model's own randomness) and the probe noise; the CLI
    # also builds the model under it. Recorded in the report.
    seed: int = DEFAULT_SEED


def report_date() -> str:
    """UTC date, from SOURCE_DATE_EPOCH when set, so the same inputs give the same bytes."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        try:
            moment = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
        except (ValueError, OverflowError, OSError) as exc:
            raise ReportError(f"SOURCE_DATE_EPOCH must be a Unix timestamp, got {epoch!r}") from exc
    else:
        moment = _dt.datetime.now(tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%d")


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ReportError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def checkpoint_info(use: CheckpointUse | None) -> dict[str, Any]:
    """`ModelInfo`'s checkpoint fields: the entry read, the prefix stripped, what stayed at init."""
    if use is None:
        return {}
    return {"checkpoint_key": use.key, "checkpoint_entries": use.choices, "checkpoint_prefix": use.prefix,
            "left_at_init": use.left_at_init, "unused_tensors": use.unused}


def coerce_inputs(inputs: Any, preprocessing: Preprocessing | None, names: Sequence[str] | None = None,
                  layout: InputLayout | None = None, *, strict: bool = False) -> InputSet:
    """Tensor, list of tensors, PIL images, paths (images, folders, globs, .pt/.npy/.npz), or an
    InputSet -> InputSet. `layout` (from the model's first conv) says how to read tensor files and
    how many channels images need. `strict`: an unreadable file found in a folder or by a glob is an error, not skipped."""
    if isinstance(inputs, InputSet):
        return inputs
    if isinstance(inputs, torch.Tensor):
        return from_tensor(inputs, names)
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items = list(inputs)
    if not items:
        raise ReportError("no inputs given")
    if all(isinstance(item, torch.Tensor) for item in items):
        return from_tensors(items, names)
    if all(isinstance(item, (str, Path)) for item in items):
        layout = layout or InputLayout(None, None)
        prep = preprocessing or Preprocessing(channels=layout.channels if layout.channels in (1, 3, 4) else None,
                                              source=DEFAULT_SOURCE)
        return load_paths(items, prep, layout, strict=strict)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and all(isinstance(item, Image.Image) for item in items):
        prep = preprocessing or Preprocessing(source=DEFAULT_SOURCE)
        tensors = [prep.to_tensor(item) for item in items]
        result = from_tensors(tensors, names)
        result.preprocessing = prep
        return result
    kinds = sorted({type(item).__name__ for item in items})
    raise ReportError(f"inputs must be tensors, PIL images or paths, not {', '.join(kinds)}")


def build_report(loaded: LoadedModel, inputs: InputSet, options: ReportOptions,
                 class_names: Sequence[str] | None = None) -> Report | None:
    """Analyze -> render; the returned Report renders HTML and JSON when asked.

    Runs with torch's RNG seeded from `options.seed` (put back afterwards), so anything random
    on the way (a lazy layer's init, noise in a model's forward) is the same on every run.
    """
    check_seed(options.seed)
    with seeded(options.seed):
        return _build_report(loaded, inputs, options, class_names)


def _build_report(loaded: LoadedModel, inputs: InputSet, options: ReportOptions,
                  class_names: Sequence[str] | None) -> Report | None:
    import torchvision

    if options.batch_size < 1:
        raise ReportError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_channels < 1:
        raise ReportError(f"--max-channels must be at least 1, got {options.max_channels}")
    if options.tap not in TAPS:
        raise ReportError(f"--tap must be one of {', '.join(TAPS)}, got {options.tap!r}")
    if not options.max_size_mb >= 0:
        raise ReportError(f"--max-size must be 0 (no limit) or more MB, got {options.max_size_mb:g}")
    if options.impact is not None and options.impact.enabled:
        from reportgen.impact import validate_impact

        validate_impact(loaded.module, options.impact)
    device = distributed.device_for(resolve_device(options.device))
    group = distributed.start(device)  # under torchrun: this process's rank in the group
    loaded = copy_if_lazy(loaded)  # a forward pass would initialise (and so change) lazy layers
    analysis_options = AnalysisOptions(
        layers=options.layers,
        max_channels=options.max_channels,
        batch_size=options.batch_size,
        tile_size=options.tile_size,
        keep_inputs=options.max_inputs_shown,
        forward_args=options.forward_args,
        tap=options.tap,
        insight=insight_options(options),
        # misfiring and ablation's unablated side ride the main pass: no clean pass of their own
        misfiring=options.impact is not None and (options.impact.misfiring or options.impact.ablation),
        ablation_baseline=options.impact is not None and options.impact.ablation,
        workers=decoding_workers(options.workers),
    )
    inputs.check_tail(options.batch_size)  # unreadable files at the end are left out before the pass
    if class_names is not None:  # a --labels file says how many classes there are: check now
        inputs.check_labels(len(class_names), f"named by {getattr(class_names, 'source', 'labels=')}")
    show_progress = options.show_progress and (group is None or group.main)
    with progress_bar(len(inputs), "forward", show_progress) as advance:
        # the true classes are checked against the output width after the first batch, so a
        # wrong label stops a long run at its start
        analysis = analyze(loaded.module, inputs, device, analysis_options, progress=advance,
                           check_labels=lambda width: inputs.check_labels(width, "the model outputs"))
    if group is not None and not group.main:  # rank 0 renders and writes; this rank ablates its share
        if options.impact is not None and options.impact.ablation:
            from reportgen.impact_passes import run_impact

            run_impact(loaded.module, inputs, device, options.impact, selected=analysis.selected,
                       baseline=analysis.ablation_baseline, batch_size=options.batch_size,
                       max_inputs_shown=options.max_inputs_shown, forward_args=options.forward_args, seed=options.seed)
        return None
    if analysis.num_classes is not None:  # models without hooks (TorchScript) get here unchecked
        inputs.check_labels(analysis.num_classes, "the model outputs")
    names = list(class_names) if class_names is not None else loaded.class_names
    if class_names is not None:
        check_label_count(class_names, analysis.num_classes, getattr(class_names, "source", "--labels"))
    elif names is not None and analysis.num_classes is not None and len(names) != analysis.num_classes:
        names = None  # metadata for another head size (e.g. num_classes=10): show indices

    preprocessing = inputs.preprocessing.describe() if inputs.preprocessing else ()
    run = RunInfo(
        title=options.title or f"{loaded.name} — reportgen",
        reportgen_version=__version__,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        device=analysis.device,
        date=report_date(),
        batch_size=options.batch_size,
        preprocessing=preprocessing,
        command=options.command,
        seed=options.seed,
    )
    model = loaded.module
    model_info = ModelInfo(
        name=loaded.name,
        type=type(model).__name__,
        source=loaded.source,
        file=display_path(loaded.file) if loaded.file else None,  # no home folders in a shared report
        sha256=loaded.sha256,
        random_weights=loaded.random_weights,
        init=loaded.init if loaded.random_weights else None,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        kind=loaded.kind,
        preprocessing_source=inputs.preprocessing.source if inputs.preprocessing else None,
        **checkpoint_info(loaded.checkpoint),
    )
    # What the report holds besides the render, fixed before any picture is drawn: the size
    # budget measures whole pages.
    from dataclasses import replace

    from reportgen.metadata import input_files

    files = input_files(inputs.paths, inputs.names)
    impact = None
    if options.impact is not None and options.impact.enabled:
        from reportgen.impact import impact_for_report

        # ablation and probes act on a conv's output channels (dim 1): not on a transformer block's tokens
        blocks = set(transformer_blocks(model))
        impact = impact_for_report(model, inputs, device, options.impact,
                                   selected=[name for name in analysis.selected if name not in blocks],
                                   anchors=section_anchors(analysis), class_names=names,
                                   batch_size=options.batch_size, max_inputs_shown=options.max_inputs_shown,
                                   forward_args=options.forward_args, show_progress=options.show_progress,
                                   seed=options.seed, baseline=analysis.ablation_baseline,
                                   misfiring=analysis.misfiring)
    render_options = RenderOptions(filter_scale=options.filter_scale)
    # The zoom's full-resolution maps take at most this share of --max-size, so they never
    # crowd out the pooled maps; with no limit, all of them.
    zoom = zoom_maps(analysis, options=render_options,
                     allowance_bytes=ZOOM_SHARE * options.max_size_mb * 1e6 if options.max_size_mb > 0 else math.inf)

    def draw(source: Any, sections: Any = None) -> Any:
        render_count = sum(len(layer.tiles) for layer in source.layers) + len(source.weights)
        with progress_bar(render_count, "render", options.show_progress) as advance:
            drawn = render(source, run=run, model_info=model_info, class_names=names, options=render_options,
                           progress=advance, thresholds=options.thresholds, sections=sections)
        skipped = inputs.skipped_note()
        notes = tuple(loaded.notes) + tuple(inputs.notes) + ((skipped,) if skipped else ()) + drawn.notes
        return replace(drawn, notes=notes, input_files=files, impact=impact, zoom_maps=zoom)

    def redraw_sections(reduced: Any) -> Any:
        return render_sections(reduced, options=render_options, thresholds=options.thresholds)

    if options.max_size_mb <= 0:
        return Report(draw(analysis))
    from reportgen.assemble import render_html
    from reportgen.size_budget import MEGABYTE, fit_to_budget

    measured: dict[str, Any] = {}

    def measure(candidate: Any) -> int:
        # The page rendered to be measured is usually the one saved: keep it, render once.
        measured.update(model=candidate, html=render_html(candidate))
        return len(measured["html"].encode("utf-8"))

    report_model = fit_to_budget(analysis, limit_bytes=round(options.max_size_mb * MEGABYTE), render_report=draw,
                                 redraw_sections=redraw_sections, measure=measure)
    if measured.get("model") is report_model:
        return Report(report_model, html=measured["html"])
    return Report(report_model)


def generate_report(
    model: nn.Module,
    inputs: Any,
    *,
    labels: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    max_channels: int = 64,
    title: str | None = None,
    preprocessing: Preprocessing | None = None,
    input_names: Sequence[str] | None = None,
    max_inputs_shown: int = 8,
    filter_scale: str = "per-filter",
    tap: str = "activation",
    random_weights: bool = False,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
    max_size_mb: float = DEFAULT_MAX_SIZE_MB,
    targets: Sequence[int | None] | None = None,
    impact: ImpactOptions | None = None,
    top_k: int = 5,
    cam: bool = True,
    cam_layer: str | None = None,
    embedding: bool = True,
    thresholds: AlertThresholds | None = None,
    strict: bool = False,
    seed: int = DEFAULT_SEED,
) -> Report | None:
    """Analyse `model` on `inputs` and return a Report (`.save(path)`, `.to_html()`, `.to_dict()`).

    `inputs`: a (N, C, ...) tensor, a list of tensors, PIL images or image paths. Tensors are used
    as given; images go through `preprocessing` (default: RGB, scaled to [0, 1]).
    `labels`: class names for the model's output indices. `layers`: glob patterns of qualified
    module names to visualise (default: every convolution). The model is left exactly as it was.
    `inputs=None`: synthetic probe inputs shaped from the model's first conv (said in the report).
    `forward_args`: for models that take several inputs or a dict, maps each (N, C, ...) batch to
    the model's arguments: a tuple (positional), a dict (keyword) or one tensor, e.g.
    `forward_args=lambda batch: (batch, batch.flip(-1))` or `lambda batch: {"image": batch}`.
    `max_size_mb`: draw smaller tiles / fewer channels / fewer inputs until the HTML fits (0: off).
    `targets`: the true class index of each input (None for unknown), for ablation and misfiring.
    `impact`: `reportgen.impact.ImpactOptions(ablation=True, probes=("rotate", "fgsm"), ...)`.
    `top_k`: inputs kept per shown channel, by max activation (0: off); their crops are drawn when
    there are more inputs than `max_inputs_shown`. `cam`: Grad-CAM for the shown inputs, at
    `cam_layer` (default: the last conv). `embedding`: PCA scatter of the penultimate features.
    `thresholds`: `reportgen.alerts.AlertThresholds(dead_fraction=..., duplicate_cosine=..., ...)`.
    `tap`: "activation" (default) observes each conv where its activation acts on it (after BN,
    a residual add and the ReLU, named on the page): feature maps, statistics, dead/constant
    alerts and top-k all use that site; "conv" observes the raw conv output instead.
    `strict`: an unreadable file found in a folder or by a glob is an error; by default it is
    skipped and listed in the report's notes (a file named on its own is always an error).
    `seed`: seeds synthetic inputs, probe noise and torch's RNG during the passes (restored after);
    recorded in the report. The model is already built: seed its init yourself.
    """
    if not isinstance(model, nn.Module):
        raise ReportError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_seed(seed)
    input_set = api_inputs(model, inputs, preprocessing=preprocessing, input_names=input_names,
                           forward_args=forward_args, strict=strict, seed=seed, targets=targets)
    loaded = LoadedModel(module=model, name=type(model).__name__, source="Python object",
                         random_weights=random_weights)
    options = ReportOptions(
        layers=tuple(layers or ()),
        device=device,
        batch_size=batch_size,
        max_channels=max_channels,
        max_inputs_shown=max_inputs_shown,
        filter_scale=filter_scale,
        tap=tap,
        title=title,
        max_size_mb=max_size_mb,
        forward_args=forward_args,
        impact=impact,
        top_k=top_k,
        cam=cam,
        cam_layer=cam_layer,
        embedding=embedding,
        thresholds=thresholds if thresholds is not None else AlertThresholds(),
        seed=seed,
    )
    return build_report(loaded, input_set, options, class_names=labels)


def api_inputs(model: nn.Module, inputs: Any, *, preprocessing: Preprocessing | None,
               input_names: Sequence[str] | None, forward_args: Callable[[torch.Tensor], Any] | None,
               strict: bool, seed: int, targets: Sequence[int | None] | None) -> InputSet:
    """The Python API's `inputs` (None: synthetic probes shaped for `model`) and `targets`, as
    `generate_report` and `compare_reports` take them."""
    if inputs is None:
        shape, how = probe_shape(model, forward_args=forward_args)
        input_set = synthetic_probes(shape, seed=seed)
        input_set.notes.append(f"Probe shape {'x'.join(map(str, shape))}: {how}.")
    else:
        input_set = coerce_inputs(inputs, preprocessing, input_names, layout_of(model), strict=strict)
    if targets is not None:
        if len(targets) != len(input_set):
            raise ReportError(f"targets has {len(targets)} entries but there are {len(input_set)} inputs")
        input_set.labels = [None if t is None else int(t) for t in targets]
        input_set.label_source = "targets="
    return input_set


def insight_options(options: ReportOptions) -> InsightOptions:
    """The insight knobs of `options`, checked (a bad value is a ReportError naming its flag)."""
    if options.top_k < 0:
        raise ReportError(f"--top-k must be 0 or more, got {options.top_k}")
    if options.top_k_channels < 1:
        raise ReportError(f"--top-k-channels must be at least 1, got {options.top_k_channels}")
    limits = options.thresholds
    if not 0.0 <= limits.dead_fraction < 1.0:
        raise ReportError(f"--dead-threshold must be in [0, 1), got {limits.dead_fraction}")
    if not 0.0 < limits.duplicate_cosine <= 1.0:
        raise ReportError(f"--duplicate-threshold must be in (0, 1], got {limits.duplicate_cosine}")
    if not limits.explode > 0:
        raise ReportError(f"--explode-threshold must be positive, got {limits.explode}")
    if options.rollout_heads not in HEAD_FUSIONS:
        raise ReportError(f"--rollout-heads must be one of {', '.join(HEAD_FUSIONS)}, got {options.rollout_heads!r}")
    return InsightOptions(top_k=options.top_k, top_k_channels=options.top_k_channels, cam=options.cam,
                          cam_layer=options.cam_layer, embedding=options.embedding,
                          duplicate_threshold=limits.duplicate_cosine, rollout=options.rollout,
                          rollout_heads=options.rollout_heads)
