"""`compare_reports`: what changed between two models, or along a training run, in one file.

The entry point of `reportgen compare` (cli_compare.py is its shell): load -> `compare_pass.compare`
(one engine loop, every model on each batch) -> `compare_render` -> `compare_view` (HTML) and
`compare_report` (`CompareReport`, the JSON). The page is kept under `max_size_mb` by drawing
fewer flips, filters and strips (`compare_render.Drawing`); every number stays.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reportgen import distributed
from reportgen._version import __version__
from reportgen.analyze import TAPS, AnalysisOptions
from reportgen.api import api_inputs, check_seed, report_date
from reportgen.checkpoints import LoadedModel, apply_checkpoint
from reportgen.compare_data import CheckpointInfo
from reportgen.compare_model import CompareRun
from reportgen.compare_pass import CompareOptions, compare
from reportgen.compare_render import Drawing, render_compare
from reportgen.compare_report import CompareReport
from reportgen.devices import resolve_device
from reportgen.engine.prefetch import decoding_workers
from reportgen.errors import ReportError
from reportgen.faults import copy_if_lazy
from reportgen.inputs import InputSet
from reportgen.metadata import display_path
from reportgen.models import DEFAULT_SEED, seeded
from reportgen.preprocess import Preprocessing
from reportgen.progress import progress_bar
from reportgen.size_budget import DEFAULT_MAX_SIZE_MB, MEGABYTE

# drawn less and less until the page fits: (flips, filters, strips, top-k channels per layer)
LADDER = (Drawing(16, 12, 4, 2), Drawing(8, 6, 4, 1), Drawing(4, 3, 2, 1), Drawing(0, 0, 0, 0))


@dataclass(frozen=True)
class CompareReportOptions:
    layers: tuple[str, ...] = ()
    device: str = "auto"
    batch_size: int = 16
    max_channels: int = 64  # channels whose top-k inputs are kept for the overlap
    tap: str = "activation"
    top_k: int = 5
    cam: bool = True  # Grad-CAM of the drawn flips in A and B
    title: str | None = None
    command: str | None = None
    show_progress: bool = False
    max_size_mb: float = DEFAULT_MAX_SIZE_MB
    seed: int = DEFAULT_SEED
    forward_args: Callable[[torch.Tensor], Any] | None = None
    workers: int | None = None  # decoding processes (None: engine.prefetch.default_workers(); 0: none)


def _info(loaded: LoadedModel) -> CheckpointInfo:
    return CheckpointInfo(name=loaded.name, source=loaded.source, type=type(loaded.module).__name__,
                          file=display_path(loaded.file) if loaded.file else None, sha256=loaded.sha256,
                          params=sum(p.numel() for p in loaded.module.parameters()))


def build_compare(loaded: Sequence[LoadedModel], inputs: InputSet, options: CompareReportOptions,
                  class_names: Sequence[str] | None = None) -> CompareReport | None:
    """Compare `loaded` (two models, or three checkpoints or more of one) on `inputs`; under
    torchrun, None on every rank but 0 (which merges and writes)."""
    check_seed(options.seed)
    if len(loaded) < 2:
        raise ReportError("compare needs two models or more: --weights A --weights B, or --against MODEL_B")
    if options.batch_size < 1:
        raise ReportError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.tap not in TAPS:
        raise ReportError(f"--tap must be one of {', '.join(TAPS)}, got {options.tap!r}")
    if options.top_k < 0:
        raise ReportError(f"--top-k must be 0 or more, got {options.top_k}")
    if not options.max_size_mb >= 0:
        raise ReportError(f"--max-size must be 0 (no limit) or more MB, got {options.max_size_mb:g}")
    names = [item.name for item in loaded]
    if len(set(names)) < len(names):
        raise ReportError(f"two compared models have the same name: {', '.join(names)}")
    device = distributed.device_for(resolve_device(options.device))
    group = distributed.start(device)
    loaded = [copy_if_lazy(item) for item in loaded]
    inputs.check_tail(options.batch_size)
    if class_names is not None:
        inputs.check_labels(len(class_names), f"named by {getattr(class_names, 'source', 'labels=')}")
    analysis_options = AnalysisOptions(layers=options.layers, max_channels=options.max_channels,
                                       batch_size=options.batch_size, forward_args=options.forward_args,
                                       tap=options.tap,
                                       workers=decoding_workers(options.workers))
    show_progress = options.show_progress and (group is None or group.main)
    with seeded(options.seed), progress_bar(len(inputs), "compare", show_progress) as advance:
        analysis = compare([item.module for item in loaded], [_info(item) for item in loaded], inputs, device,
                           CompareOptions(analysis=analysis_options, top_k=options.top_k, cam=options.cam),
                           progress=advance)
    if analysis is None:  # a rank other than 0: its share is merged into rank 0's
        return None
    if analysis.num_classes is not None:
        inputs.check_labels(analysis.num_classes, "the model outputs")
    label_names = list(class_names) if class_names is not None else loaded[0].class_names
    if label_names is not None and analysis.num_classes is not None and len(label_names) != analysis.num_classes:
        label_names = None
    run = CompareRun(title=options.title or f"{names[0]} vs {names[-1]} — reportgen compare",
                     date=report_date(), reportgen_version=__version__, torch_version=torch.__version__,
                     device=analysis.device, batch_size=options.batch_size, inputs=len(inputs), seed=options.seed,
                     command=options.command)
    notes = [note for item in loaded for note in item.notes] + list(inputs.notes)
    skipped = inputs.skipped_note()
    if skipped:
        notes.append(skipped)
    from reportgen.compare_view import render_html

    limit = round(options.max_size_mb * MEGABYTE) if options.max_size_mb > 0 else None
    for step, drawing in enumerate(LADDER):
        model = render_compare(analysis, run=run, class_names=label_names, drawing=drawing, notes=notes)
        if limit is None:
            return CompareReport(model)
        if step:
            from dataclasses import replace

            model = replace(model, budget=f"To stay under --max-size {options.max_size_mb:g} MB, at most "
                                          f"{drawing.flips} flips, {drawing.filters} filters, {drawing.strips} "
                                          f"filter strips and {drawing.top_sets} top-k channel(s) per layer are "
                                          "drawn; every number is kept.")
        page = render_html(model)
        if len(page.encode("utf-8")) <= limit:
            return CompareReport(model, html=page)
    raise ReportError(f"the comparison does not fit --max-size {options.max_size_mb:g} MB even without pictures "
                      f"({len(page.encode('utf-8')) / 1e6:.2f} MB): raise --max-size or compare fewer layers")


def _as_loaded(model: nn.Module, name: str) -> LoadedModel:
    if not isinstance(model, nn.Module):
        raise ReportError(f"a compared model must be a torch.nn.Module, not {type(model).__name__}")
    return LoadedModel(module=model, name=name, source="Python object")


def _checkpoint(base: nn.Module, entry: Any, name: str, *, trust_pickle: bool) -> LoadedModel:
    """A copy of `base` with `entry` loaded: a state_dict, a checkpoint path, or a module."""
    if isinstance(entry, nn.Module):
        return _as_loaded(entry, name)
    loaded = LoadedModel(module=copy.deepcopy(base), name=name, source="Python object")
    if isinstance(entry, (str, Path)):
        apply_checkpoint(loaded, Path(entry), trust_pickle=trust_pickle)
        loaded.source = f"{type(base).__name__}, weights from {Path(entry).name}"
        return loaded
    if isinstance(entry, Mapping):
        try:
            loaded.module.load_state_dict(dict(entry))
        except RuntimeError as exc:
            raise ReportError(f"checkpoint {name} does not fit {type(base).__name__}: {exc}") from exc
        return loaded
    raise ReportError(f"a checkpoint must be a state_dict, a path or a module, not {type(entry).__name__}")


def compare_reports(
    model_a: nn.Module,
    model_b: nn.Module | None = None,
    inputs: Any = None,
    *,
    checkpoints: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    targets: Sequence[int | None] | None = None,
    layers: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    tap: str = "activation",
    top_k: int = 5,
    cam: bool = True,
    preprocessing: Preprocessing | None = None,
    input_names: Sequence[str] | None = None,
    title: str | None = None,
    max_size_mb: float = DEFAULT_MAX_SIZE_MB,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
    trust_pickle: bool = False,
    strict: bool = False,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
) -> CompareReport:
    """Compare two models on the same inputs, or checkpoints of one (`checkpoints`: state_dicts,
    checkpoint paths or modules, each loaded into a copy of `model_a`; three or more make a
    training run). Returns a `CompareReport` (`.save(path, json_path=...)`, `.to_html()`,
    `.to_dict()`). `names`: one per model (default A, B or checkpoint 0, 1, ...). `cam`:
    Grad-CAM of the drawn flips in both models. `inputs`,
    `labels`, `targets`, `preprocessing`, `tap`, `forward_args`, `seed` as in
    `generate_report`; `workers` decoding processes as in `generate_report`. The models are left as
    they were."""
    check_seed(seed)
    if checkpoints is not None and model_b is not None:
        raise ReportError("give model_b or checkpoints, not both")
    if checkpoints is not None:
        if len(checkpoints) < 2:
            raise ReportError(f"checkpoints needs two or more entries, got {len(checkpoints)}")
        labels_given = list(names) if names is not None else [f"checkpoint {i}" for i in range(len(checkpoints))]
        if len(labels_given) != len(checkpoints):
            raise ReportError(f"names has {len(labels_given)} entries for {len(checkpoints)} checkpoints")
        if not isinstance(model_a, nn.Module):
            raise ReportError(f"model_a must be a torch.nn.Module, not {type(model_a).__name__}")
        loaded = [_checkpoint(model_a, entry, name, trust_pickle=trust_pickle)
                  for entry, name in zip(checkpoints, labels_given)]
    else:
        if model_b is None:
            raise ReportError("compare_reports needs model_b or checkpoints")
        pair = list(names) if names is not None else ["A", "B"]
        if len(pair) != 2:
            raise ReportError(f"names has {len(pair)} entries for two models")
        loaded = [_as_loaded(model_a, pair[0]), _as_loaded(model_b, pair[1])]
    input_set = api_inputs(model_a, inputs, preprocessing=preprocessing, input_names=input_names,
                           forward_args=forward_args, strict=strict, seed=seed, targets=targets)
    options = CompareReportOptions(layers=tuple(layers or ()), device=device, batch_size=batch_size, tap=tap,
                                   top_k=top_k, cam=cam, title=title, max_size_mb=max_size_mb, seed=seed,
                                   forward_args=forward_args, workers=workers)
    return build_compare(loaded, input_set, options, class_names=labels)


__all__ = ["CompareReport", "CompareReportOptions", "build_compare", "compare_reports"]
