"""The load stage for models: a MODEL spec (and --weights) -> a `LoadedModel`.

Specs:
- `torchvision:NAME` (random init unless `--weights DEFAULT|ENUM_NAME|PATH`);
- `timm:NAME` and `hf:FOLDER` (library_models.py: timm.create_model, a transformers
  save_pretrained folder);
- `path/to/file.py:FACTORY` and `package.module:FACTORY` (a class or a function), called with
  `--model-arg key=value` keyword arguments;
- otherwise a model file (model_files.py).
Every kind takes `--weights PATH` (`--weights-key`, `--weights-partial`: checkpoints.py).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from reportgen.checkpoints import LoadedModel, apply_checkpoint
from reportgen.errors import ReportError, one_line
from reportgen.metadata import display_path
from reportgen.model_files import load_model_file
from reportgen.model_state import seeded
from reportgen.preprocess import Preprocessing

DEFAULT_SEED = 0  # `--seed`: random inits, probes and synthetic inputs are the same on every run
MAX_SEED = 2**63 - 2  # torch.manual_seed takes < 2**64; a factory's init is also checked under seed + 1
# A weight download that gets no answer fails after this long instead of hanging (seconds).
DOWNLOAD_TIMEOUT_S = 20.0


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings -> kwargs; values are Python literals, else kept as strings."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ReportError(f"--model-arg wants key=value, got {pair!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text
    return kwargs


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    seed: int = DEFAULT_SEED,
    weights_key: str | None = None,
    weights_partial: bool = False,
) -> LoadedModel:
    """`seed` seeds torch's RNG for the model's random init (the caller's RNG state is kept).
    `weights_key` names the checkpoint entry to read (e.g. `state_dict_ema`); `weights_partial`
    loads the tensors that fit and lists the rest, instead of refusing a partial match."""
    kwargs = dict(model_args or {})
    checkpoint_options = {"trust_pickle": trust_pickle, "key": weights_key, "partial": weights_partial}
    if (weights_key or weights_partial) and weights is None and not spec.startswith("hf:"):
        raise ReportError(f"{'--weights-key' if weights_key else '--weights-partial'} goes with --weights PATH")
    if spec.startswith("torchvision:"):
        loaded = load_torchvision(spec.split(":", 1)[1], weights, kwargs, seed=seed, **checkpoint_options)
        loaded.kind = "torchvision"
        return loaded
    if spec.startswith("timm:"):
        from reportgen.library_models import load_timm, refuse_timm_default

        name = spec.split(":", 1)[1]
        loaded = load_timm(name, kwargs, seed=seed, weights_given=weights is not None)
        if weights is not None:
            if weights.upper() == "DEFAULT" and not Path(weights).is_file():
                raise refuse_timm_default(name, loaded.module)
            apply_checkpoint(loaded, Path(weights), **checkpoint_options)
        return loaded
    if spec.startswith("hf:"):
        from reportgen.library_models import load_hf

        if weights_key:
            raise ReportError("--weights-key is for checkpoint files; hf: reads the folder's own weights")
        loaded = load_hf(spec.split(":", 1)[1], kwargs, seed=seed, partial=weights_partial)
        if weights is not None:
            apply_checkpoint(loaded, Path(weights), trust_pickle=trust_pickle)
        return loaded
    target, sep, factory = spec.rpartition(":")
    if sep and factory.isidentifier() and (target.endswith(".py") or _looks_like_module(target)):
        loaded = load_factory(target, factory, kwargs, seed=seed, check_init=weights is None)
        loaded.kind = "factory"
    else:
        loaded = load_model_file(Path(spec), trust_pickle=trust_pickle)
        loaded.kind = "file"
    if weights is not None:
        apply_checkpoint(loaded, Path(weights), **checkpoint_options)
    return loaded


def _looks_like_module(target: str) -> bool:
    return bool(target) and all(part.isidentifier() for part in target.split("."))


def load_factory(target: str, factory: str, kwargs: dict[str, Any], *, seed: int = DEFAULT_SEED,
                 check_init: bool = False) -> LoadedModel:
    """Import `file.py` or `package.module` and call FACTORY(**kwargs) under `seed`.

    With `check_init` (no --weights to follow), FACTORY is called a second time under another
    seed: if the weights differ they are the factory's random init (said with the seed); if not,
    the factory loaded or seeded them itself, and no random init is claimed.
    """
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ReportError(f"model file not found: {target}")
        module_name = f"_reportgen_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ReportError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        # The user's file may import siblings next to it.
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ReportError(f"importing {target} failed: {one_line(exc)}") from exc
        finally:
            sys.path.remove(str(path.resolve().parent))
        source = f"{display_path(path)}:{factory}"  # shown in the report: no home folders
    else:
        # `package.module` next to where reportgen runs, as `python -m` would find it.
        added = "" not in sys.path and os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ReportError(f"cannot import module {target!r}: {one_line(exc)}") from exc
        except Exception as exc:
            raise ReportError(f"importing {target} failed: {one_line(exc)}") from exc
        finally:
            if added:
                sys.path.remove(os.getcwd())
        source = f"{target}:{factory}"
    maker = getattr(module, factory, None)
    if maker is None or not callable(maker):
        raise ReportError(f"{target} has no callable {factory!r}")
    built = _call_factory(maker, source, kwargs, seed)
    loaded = LoadedModel(module=built, name=factory, source=f"factory {source}")
    if check_init:
        if _same_weights(built, _call_factory(maker, source, kwargs, seed + 1)):
            loaded.notes.append(f"The factory gives the same weights for every --seed (it loads or seeds them "
                                f"itself): reportgen's seed {seed} did not choose them.")
        else:
            loaded.random_weights = True
            loaded.init = f"factory default init, seed {seed}"
    return loaded


def _call_factory(maker: Any, source: str, kwargs: Mapping[str, Any], seed: int) -> nn.Module:
    try:
        with seeded(seed):
            built = maker(**kwargs)
    except Exception as exc:
        raise ReportError(f"{source}({_kwargs_text(kwargs)}) raised {one_line(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise ReportError(f"{source} returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _same_weights(first: nn.Module, second: nn.Module) -> bool:
    """Equal state_dicts (same keys, shapes and values; NaN equal to NaN). Lazy parameters are
    made at the first forward, under the report's seed: never equal."""
    a, b = first.state_dict(), second.state_dict()
    if a.keys() != b.keys() or any(is_lazy(v) for v in a.values()):
        return False
    return all(a[k].shape == b[k].shape and torch.equal(a[k].nan_to_num(), b[k].nan_to_num())
               if a[k].is_floating_point() else torch.equal(a[k], b[k]) for k in a)


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def load_torchvision(name: str, weights: str | None, kwargs: dict[str, Any], *, trust_pickle: bool = False,
                     seed: int = DEFAULT_SEED, key: str | None = None, partial: bool = False) -> LoadedModel:
    import torchvision
    from torchvision import models as tv_models

    available = set(tv_models.list_models())
    if name not in available:
        close = sorted(n for n in available if n.startswith(name[:3]))[:6]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ReportError(f"torchvision has no model {name!r}{hint}")
    weights_enum = tv_models.get_model_weights(name)
    default = getattr(weights_enum, "DEFAULT", None)
    chosen = None
    checkpoint: Path | None = None
    if weights is not None:
        if Path(weights).is_file():
            checkpoint = Path(weights)
        elif _looks_like_path(weights):
            raise ReportError(f"checkpoint not found: {weights}")
        else:
            chosen = _weights_member(weights_enum, weights)
    if chosen is not None and "num_classes" in kwargs:
        raise ReportError(f"--model-arg num_classes does not fit the pretrained {chosen}; "
                          "load your own fine-tuned checkpoint with --weights PATH instead")
    with seeded(seed):
        module = _build_torchvision(tv_models, name, chosen, _no_pretrained_backbone(tv_models, name, kwargs))
    meta_source = chosen or default
    loaded = LoadedModel(
        module=module,
        name=name,
        source=f"torchvision {torchvision.__version__}: {name}" + (f" with {chosen}" if chosen else ""),
        random_weights=chosen is None and checkpoint is None,
        init=f"torchvision default init, seed {seed}" if chosen is None and checkpoint is None else None,
    )
    if meta_source is not None:
        categories = meta_source.meta.get("categories")
        if categories and "num_classes" not in kwargs:
            loaded.class_names = [str(c) for c in categories]
        loaded.preprocessing, loaded.input_shape = _preprocessing_from_weights(meta_source)
    if checkpoint is not None:
        apply_checkpoint(loaded, checkpoint, trust_pickle=trust_pickle, key=key, partial=partial)
    elif key or partial:
        raise ReportError(f"{'--weights-key' if key else '--weights-partial'} goes with --weights PATH")
    return loaded


def _no_pretrained_backbone(tv_models: Any, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The builder's keyword arguments with `weights_backbone=None` added where it takes one.

    Detection and segmentation builders default to an ImageNet backbone, which they download even
    when asked for random weights (and which a checkpoint given with --weights PATH replaces
    anyway); with `--weights ENUM` torchvision sets it to None itself. A user's own
    `--model-arg weights_backbone=...` is kept.
    """
    import inspect

    if "weights_backbone" in kwargs:
        return kwargs
    try:
        parameters = inspect.signature(tv_models.get_model_builder(name)).parameters
    except (TypeError, ValueError):
        return kwargs
    if "weights_backbone" not in parameters:
        return kwargs
    return {**kwargs, "weights_backbone": None}


def _build_torchvision(tv_models: Any, name: str, chosen: Any, kwargs: dict[str, Any]) -> nn.Module:
    """Build the model, downloading its weights into torch's cache if needed.

    torch.hub prints "Downloading ..." to stderr; that line is held back and shown only when the
    download worked, so an offline failure is exactly one error line. The socket timeout is
    process-wide in Python, so it is set for the call and put back afterwards.
    """
    captured = io.StringIO()
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stderr(captured):
            if chosen is not None:
                module = tv_models.get_model(name, weights=chosen, progress=False, **kwargs)
            else:
                module = tv_models.get_model(name, weights=None, **kwargs)
        sys.stderr.write(captured.getvalue())
        return module
    except Exception as exc:
        if chosen is not None and _is_download_failure(exc):
            url = getattr(chosen, "url", "")
            cache = Path(_hub_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            raise ReportError(
                f"could not download torchvision weights {chosen} from {url} (offline? {one_line(exc, 120)}); "
                f"download the file elsewhere and pass --weights PATH, or put it at {cache}"
            ) from exc
        raise ReportError(f"torchvision:{name}({_kwargs_text(kwargs)}) failed: {one_line(exc)}") from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _hub_dir() -> str:
    import torch.hub

    return torch.hub.get_dir()


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or bool(re.search(r"\.(pth?|th|ckpt|bin|safetensors|tar)$", text))


def _weights_member(weights_enum: Any, text: str) -> Any:
    member = text.split(".")[-1]
    if member.upper() == "DEFAULT":
        return weights_enum.DEFAULT
    try:
        return weights_enum[member]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in weights_enum)])
        raise ReportError(f"--weights {text!r} is neither a file nor one of {names}") from None


def _is_download_failure(exc: BaseException) -> bool:
    import urllib.error

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, OSError) and "download" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _preprocessing_from_weights(weights: Any) -> tuple[Preprocessing | None, tuple[int, ...] | None]:
    try:
        transform = weights.transforms()
    except Exception:
        return None, None
    crop = getattr(transform, "crop_size", None)
    resize = getattr(transform, "resize_size", None)
    mean = getattr(transform, "mean", None)
    std = getattr(transform, "std", None)
    if crop is None or mean is None:
        return None, None
    crop_hw = (int(crop[0]), int(crop[-1]))
    interpolation = getattr(getattr(transform, "interpolation", None), "value", "bilinear")
    preprocessing = Preprocessing(
        interpolation=interpolation,
        channels=3,
        resize=tuple(int(r) for r in resize) if resize else None,
        center_crop=crop_hw,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        source=f"from {weights} metadata",
    )
    return preprocessing, (3, *crop_hw)
