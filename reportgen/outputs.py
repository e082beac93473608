"""What a model's output is: its class logits, if it has any, and a description when it has not.

One finder for every pass (predictions, Grad-CAM, ablation, misfiring, probes, per-class): a
model that returns `{"features": f, "logits": l}` must be explained and ablated on `l`, and a
detection model's list of box dicts must give no "predictions" at all. Taking the first tensor
of an output got both wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

MAX_DESCRIBED = 6  # items named in a description


def is_logits(value: Any, batch_size: int | None) -> bool:
    """Class logits: a floating (N, K) tensor with K >= 2 whose N is the batch size."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 2
            and value.shape[1] >= 2 and (batch_size is None or value.shape[0] == batch_size))


def find_logits(output: Any, batch_size: int | None) -> torch.Tensor | None:
    """The class logits in `output`, or None. A mapping's `logits` entry wins (Hugging Face
    outputs too); otherwise the first logits-shaped tensor among its values, or among a tuple's
    or list's items, in the model's own order, one level down. A list of dicts (detection) or a
    map (segmentation) has none, nor has a transformers ModelOutput without `logits` (a
    backbone's `pooler_output` is (N, C) features, not classes)."""
    if is_logits(output, batch_size):
        return output
    logits = getattr(output, "logits", None) if not isinstance(output, torch.Tensor) else None
    if isinstance(output, Mapping) and "logits" in output:
        logits = output["logits"]
    if is_logits(logits, batch_size):
        return logits
    if _is_named_output(output):
        return None  # its fields are named, and none is `logits`: features (a backbone's pooler_output)
    items: Sequence[Any] = ()
    if isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, (list, tuple)):
        items = output
    return next((item for item in items if is_logits(item, batch_size)), None)


def _is_named_output(output: Any) -> bool:
    """A transformers `ModelOutput` (an OrderedDict subclass with `to_tuple`), told apart by
    duck typing: reportgen does not import transformers to look at an output."""
    return isinstance(output, Mapping) and callable(getattr(output, "to_tuple", None))


def describe_output(output: Any) -> str:
    """The output's types and shapes, for a note: "a list of 2 dict(s) (boxes (100, 4), ...)"."""
    if isinstance(output, torch.Tensor):
        return f"a {str(output.dtype).removeprefix('torch.')} tensor {tuple(output.shape)}"
    if isinstance(output, Mapping):
        parts = [f"{key} {_short(value)}" for key, value in list(output.items())[:MAX_DESCRIBED]]
        more = f", +{len(output) - MAX_DESCRIBED} more" if len(output) > MAX_DESCRIBED else ""
        return f"a dict ({', '.join(parts)}{more})"
    if isinstance(output, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in output})
        first = f": the first is {describe_output(output[0])}" if output else ""
        return f"a {type(output).__name__} of {len(output)} {'/'.join(kinds) or 'item'}(s){first}"
    return f"a {type(output).__name__}"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    return type(value).__name__
