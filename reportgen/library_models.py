"""Models from model libraries: `timm:NAME` (timm.create_model) and `hf:FOLDER` (a Hugging Face
transformers folder written by `save_pretrained`). Both are optional extras, imported only here
and only when such a MODEL is given; neither ever downloads anything.

Each carries its own preprocessing, taken as the library itself resolves it and said so in the
report: timm's `pretrained_cfg` through `timm.data.resolve_data_config` and the steps of
`timm.data.create_transform`; a transformers folder's `preprocessor_config.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from reportgen.checkpoints import CheckpointUse, LoadedModel, partial_note, sha256_of
from reportgen.errors import ReportError, one_line
from reportgen.metadata import display_path
from reportgen.model_state import seeded
from reportgen.preprocess import Preprocessing

INSTALL = {
    "timm": "pip install timm (or: pip install 'reportgen[timm]')",
    "transformers": "pip install transformers safetensors (or: pip install 'reportgen[hf]')",
}
# PIL's resampling codes, as transformers' preprocessor_config.json stores them.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
TENSOR_RESIZE = ("nearest", "bilinear", "bicubic")  # what `Preprocessing` resizes with
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                   "pytorch_model.bin.index.json")
CONVNEXT_FULL_SIZE = 384  # transformers' ConvNeXt processor: below this, resize by 1/crop_pct then crop


def _require(package: str, spec: str) -> Any:
    """The optional library, or one line saying what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ReportError(f"{spec} needs the optional package {package}: {INSTALL[package]}") from exc


# --- timm ---------------------------------------------------------------------------------

def load_timm(name: str, kwargs: dict[str, Any], *, seed: int, weights_given: bool) -> LoadedModel:
    """timm.create_model(name, pretrained=False, **kwargs) under `seed`, with timm's preprocessing
    and (for an ImageNet-1k head) its class names. `--weights` is applied by the caller."""
    timm = _require("timm", f"timm:{name}")
    if "pretrained" in kwargs:
        raise ReportError(f"timm:{name}: --model-arg pretrained would download weights, which reportgen never "
                          "does; pass the downloaded file as --weights PATH")
    if not timm.is_model(name):
        close = timm.list_models(f"{name.split('_')[0]}*")[:6]
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        raise ReportError(f"timm has no model {name!r}{hint}")
    try:
        with seeded(seed):
            module = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise ReportError(f"timm.create_model({name!r}{_kwargs_text(kwargs)}) failed: {one_line(exc)}") from exc
    loaded = LoadedModel(
        module=module, name=name, kind="timm",
        source=f"timm {timm.__version__}: create_model({name!r}{_kwargs_text(kwargs)})",
        random_weights=not weights_given, init=None if weights_given else f"timm default init, seed {seed}",
    )
    loaded.preprocessing, loaded.input_shape = timm_preprocessing(timm, module, name, loaded.notes)
    loaded.class_names = _timm_class_names(timm, module, loaded.notes)
    return loaded


def refuse_timm_default(name: str, module: nn.Module) -> ReportError:
    """`--weights DEFAULT` for timm: the hub file to fetch elsewhere and pass as --weights PATH."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    hub = cfg.get("hf_hub_id")
    where = (f"the Hugging Face hub's {hub}" if hub else cfg.get("url") or "the network")
    fetch = f"`hf download {hub} model.safetensors`" if hub else "a download"
    return ReportError(f"timm:{name} --weights DEFAULT means timm's pretrained weights from {where}, and reportgen "
                       f"never downloads; fetch them where there is network ({fetch}) and pass --weights PATH")


def timm_preprocessing(timm: Any, module: nn.Module, name: str,
                       notes: list[str]) -> tuple[Preprocessing | None, tuple[int, ...] | None]:
    """The eval transform timm itself builds for `module` (`create_transform(**resolve_data_config(
    model=module))`), read step by step: its Resize (size, interpolation), CenterCrop and Normalize.
    Resizing is done with PIL, as timm's transform does on a PIL image."""
    from torchvision import transforms as T

    config = timm.data.resolve_data_config(model=module)
    channels, height, width = (int(v) for v in config["input_size"])
    transform = timm.data.create_transform(**config)
    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    interpolation = str(config.get("interpolation") or "bilinear")
    mean = tuple(float(m) for m in config["mean"])
    std = tuple(float(s) for s in config["std"])
    other: list[str] = []
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, T.Resize):
            resize = (step.size,) if isinstance(step.size, int) else tuple(int(v) for v in step.size)
            interpolation = step.interpolation.value
        elif isinstance(step, T.CenterCrop):
            crop = (int(step.size[0]), int(step.size[-1]))
        elif isinstance(step, T.Normalize):
            mean = tuple(float(m) for m in step.mean)
            std = tuple(float(s) for s in step.std)
        elif type(step).__name__ not in ("ToTensor", "MaybeToTensor"):
            other.append(type(step).__name__)
    if other or interpolation not in TENSOR_RESIZE:
        notes.append(f"timm's eval transform for {name} has steps reportgen does not repeat "
                     f"({', '.join(other) or interpolation}): images are resized to {height}x{width} instead "
                     "(--resize and --center-crop override).")
        resize, crop = (height, width), None
        interpolation = interpolation if interpolation in TENSOR_RESIZE else "bilinear"
    crop_pct = config.get("crop_pct")
    how = f"crop_pct {crop_pct:g}, {config.get('crop_mode') or 'center'}" if crop_pct else "no crop_pct"
    preprocessing = Preprocessing(
        channels=channels, resize=resize, center_crop=crop, mean=mean, std=std, interpolation=interpolation,
        pil_resize=True, source=f"from timm's pretrained_cfg of {name} via resolve_data_config ({how})",
    )
    return preprocessing, (channels, height, width)


def _timm_class_names(timm: Any, module: nn.Module, notes: list[str]) -> list[str] | None:
    """ImageNet class names from timm's own tables (shipped in the package, no download) when the
    head is one timm knows the labels of; None otherwise (--labels names them)."""
    infer = getattr(timm.data, "infer_imagenet_subset", None)
    info = getattr(timm.data, "ImageNetInfo", None)
    subset = infer(module) if infer is not None else None
    if subset is None:
        return None
    try:
        table = info(subset)  # type: ignore[misc]
        return [table.index_to_description(i) for i in range(table.num_classes())]
    except Exception as exc:
        notes.append(f"timm's {subset} class names could not be read from the timm package "
                     f"({one_line(exc, 80)}): classes are shown by index; --labels names them.")
        return None


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in sorted(kwargs.items()))


# --- Hugging Face transformers ------------------------------------------------------------

def load_hf(folder_text: str, kwargs: dict[str, Any], *, seed: int, partial: bool) -> LoadedModel:
    """A local `save_pretrained` folder through AutoModelForImageClassification (AutoModel when
    its architecture has no image-classification head), `local_files_only`; tensors the model has
    and the folder lacks are refused unless `partial`, then listed."""
    folder = Path(folder_text)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "is not a local folder"
        raise ReportError(f"hf:{folder_text} {what}: reportgen reads a folder written by save_pretrained "
                          "(config.json and the weights) and never downloads; for a hub model run "
                          f"`hf download {folder_text} --local-dir DIR` where there is network, then hf:DIR")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ReportError(f"hf:{folder_text} has no config.json: not a save_pretrained folder")
    transformers = _require("transformers", f"hf:{folder_text}")
    raw = _read_json(config_file)
    architectures = [str(a) for a in raw.get("architectures") or []]
    classifier = any("ForImageClassification" in a for a in architectures)
    auto = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
    # Mismatched shapes are let through here and refused below, naming the tensors (transformers'
    # own refusal points at a log it printed); without --weights-partial nothing is kept.
    options: dict[str, Any] = {"local_files_only": True, "output_loading_info": True,
                               "ignore_mismatched_sizes": True, **kwargs}
    try:
        with seeded(seed), _quiet(transformers):
            module, info = auto.from_pretrained(str(folder), **options)
    except Exception as exc:
        raise ReportError(f"hf:{folder_text}: {auto.__name__}.from_pretrained failed: {one_line(exc)}") from exc
    module.eval()
    mismatched = [m for m in info.get("mismatched_keys") or ()]
    left = tuple(sorted({str(k) for k in info.get("missing_keys") or ()} | {str(m[0]) for m in mismatched}))
    unused = tuple(sorted(str(k) for k in info.get("unexpected_keys") or ()))
    if left and not partial:
        shapes = "".join(f" {m[0]} {list(m[1])} in the folder vs {list(m[2])}" for m in mismatched[:2]
                         if len(m) == 3)
        raise ReportError(f"hf:{folder_text}: the folder's weights leave {len(left)} tensor(s) of {type(module).__name__} "
                          f"unset, e.g. {', '.join(left[:3])}" + (f" (shape conflicts:{shapes})" if shapes else "")
                          + "; --weights-partial loads the rest and keeps these at their init")
    weights = next((folder / n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    loaded = LoadedModel(
        module=module, name=folder.resolve().name, kind="hf",
        source=f"transformers {transformers.__version__}: {auto.__name__} -> {type(module).__name__} "
               f"from {display_path(folder)}",
        file=str(weights) if weights is not None else None,
        sha256=sha256_of(weights) if weights is not None else None,
        checkpoint=CheckpointUse(left_at_init=left, unused=unused),
    )
    if not classifier:
        loaded.notes.append(f"{', '.join(architectures) or 'The folder'} has no image-classification head: loaded "
                            f"with AutoModel as a backbone; its outputs are features, not class logits.")
    if left or unused:
        loaded.notes.append(partial_note(left, unused, f"seed {seed}"))
    if classifier:
        loaded.class_names = _id2label(module.config)
    prep_file = folder / "preprocessor_config.json"
    if prep_file.is_file():
        loaded.preprocessing, loaded.input_shape = hf_preprocessing(_read_json(prep_file), folder.name, loaded.notes)
    else:
        loaded.notes.append(f"hf:{folder.name} has no preprocessor_config.json: images get reportgen's default "
                            "preprocessing unless --resize/--mean/--std are given.")
    return loaded


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' loading warnings and progress bars off during the load (what they say about
    missing or unexpected tensors is in the loading info, and the report), put back afterwards."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a JSON object")
    return data


def _id2label(config: Any) -> list[str] | None:
    mapping = getattr(config, "id2label", None) or {}
    try:
        labels = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        return None
    count = len(labels)
    return [labels[i] for i in range(count)] if count and set(labels) == set(range(count)) else None


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int):
        return value, value
    return None


def hf_preprocessing(config: Mapping[str, Any], name: str,
                     notes: list[str]) -> tuple[Preprocessing | None, tuple[int, ...] | None]:
    """preprocessor_config.json's resize, center crop and normalisation as transformers' image
    processors apply them: `size` as height/width or shortest_edge (ConvNeXt's crop_pct rule:
    below 384 px, the shorter side to shortest_edge / crop_pct, then a square crop), `resample`
    (PIL's codes), `do_center_crop` with `crop_size`, `image_mean`/`image_std`."""
    unrepeated: list[str] = []
    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    size = config.get("size")
    kind = str(config.get("image_processor_type") or "")
    if config.get("do_resize", size is not None) and size is not None:
        exact = _size(size)
        if exact is not None:
            resize = exact
        elif isinstance(size, Mapping) and "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            if "longest_edge" in size:
                unrepeated.append(f"longest_edge {size['longest_edge']}")
            crop_pct = config.get("crop_pct")
            if kind.startswith("ConvNext") and crop_pct:
                if edge < CONVNEXT_FULL_SIZE:
                    resize, crop = (int(edge / float(crop_pct)),), (edge, edge)
                else:
                    resize = (edge, edge)
            else:
                resize = (edge,)
        else:
            unrepeated.append(f"size {size}")
    if config.get("do_center_crop") and crop is None:
        crop = _size(config.get("crop_size"))
    resample = PIL_RESAMPLE.get(int(config.get("resample", 2)), "bilinear")
    if resample not in TENSOR_RESIZE:
        unrepeated.append(f"{resample} resampling (bilinear used)")
        resample = "bilinear"
    rescale = config.get("rescale_factor", 1 / 255)
    if not config.get("do_rescale", True) or not math.isclose(float(rescale), 1 / 255, rel_tol=1e-6):
        unrepeated.append(f"rescale {'off' if not config.get('do_rescale', True) else rescale} (pixels scaled to [0, 1])")
    mean = std = None
    if config.get("do_normalize", True) and config.get("image_mean") is not None and config.get("image_std") is not None:
        mean = tuple(float(m) for m in _as_list(config["image_mean"]))
        std = tuple(float(s) for s in _as_list(config["image_std"]))
    if unrepeated:
        notes.append(f"{name}'s preprocessor_config.json asks for what reportgen does not repeat: "
                     f"{'; '.join(unrepeated)}.")
    preprocessing = Preprocessing(
        channels=3, resize=resize, center_crop=crop, mean=mean, std=std, interpolation=resample,
        source=f"from {name}/preprocessor_config.json ({kind or 'image processor'})",
    )
    final = crop or (resize if resize is not None and len(resize) == 2 else None)
    return preprocessing, ((3, *final) if final is not None else None)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]
