"""The torchinfo walk: the layer table and its totals, normalised to one input.

torchinfo runs one forward pass with its own hooks. We hand it the first real batch while our
capture hooks are also attached, so the summary costs no extra forward pass. Its figures scale
with the batch; we divide them back to one input, the way torchinfo shows a (1, C, H, W) input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reportgen.sites import call_key
from reportgen.geometry import FlowRecorder, Geometry


@dataclass(frozen=True)
class SummaryRow:
    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    kernel_size: tuple[int, ...]
    mult_adds: int
    trainable: str
    # a container (a module with submodules): params and mult_adds are the sums over the layers it ran
    container: bool = False
    geometry: Geometry | None = None  # where its output cells look in the input (None: not followed)


@dataclass(frozen=True)
class SummaryTable:
    rows: tuple[SummaryRow, ...]
    total_params: int
    trainable_params: int
    mult_adds: int
    input_bytes: int
    forward_backward_bytes: int
    param_bytes: int
    available: bool
    problem: str | None = None


def _per_input_shape(shape: Any, batch: int) -> tuple[int, ...]:
    if not shape or not isinstance(shape, (list, tuple)):
        return ()
    if isinstance(shape[0], (list, tuple)):  # several outputs: show the first
        return _per_input_shape(shape[0], batch)
    dims = tuple(int(d) for d in shape)
    if dims and dims[0] == batch:
        dims = (1, *dims[1:])
    return dims


def _kernel(kernel_size: Any) -> tuple[int, ...]:
    if isinstance(kernel_size, (list, tuple)):
        return tuple(int(k) for k in kernel_size)
    if isinstance(kernel_size, int):
        return (kernel_size,)
    return ()


def summarize(model: nn.Module, batch: torch.Tensor, input_data: Any = None) -> SummaryTable:
    """Run torchinfo on `batch` (already on the model's device). Raises what the forward raises.

    `input_data` replaces `[batch]` as the model's arguments (a tuple/list: positional, a dict:
    keyword) for models that take several inputs; `batch` still sets the batch size.
    """
    import torchinfo
    from torchinfo import torchinfo as torchinfo_module

    names = {id(module): name for name, module in model.named_modules()}
    size = int(batch.shape[0])
    try:
        with FlowRecorder(model) as flow:
            stats = torchinfo.summary(
                model,
                input_data=[batch] if input_data is None else _as_input_data(input_data),
                depth=100,
                verbose=0,
                col_names=("output_size", "num_params", "kernel_size", "mult_adds", "trainable"),
                mode="eval",
            )
    finally:
        # torchinfo caches every summary in a module-level dict keyed by class name, which
        # would keep this model (and its LayerInfo objects) alive for the whole process.
        torchinfo_module._cached_forward_pass.pop(model.__class__.__name__, None)

    geometry = flow.geometries()
    summed = _leaf_sums(stats.summary_list)
    calls: dict[int, int] = {}
    rows = []
    for info, macs in zip(stats.summary_list, summed):
        module_name = names.get(info.layer_id, info.var_name)
        call_index = calls.get(info.layer_id, 0)
        calls[info.layer_id] = call_index + 1
        key = call_key(module_name, call_index)
        rows.append(
            SummaryRow(
                name=key if module_name else model.__class__.__name__,
                type=info.class_name,
                depth=int(info.depth),
                output_shape=_per_input_shape(info.output_size, size),
                params=max(int(info.num_params), 0) if not info.is_recursive else 0,
                kernel_size=_kernel(info.kernel_size),
                mult_adds=macs // size,
                trainable=str(info.trainable),
                container=not info.is_leaf_layer,
                geometry=geometry.get(key) or flow.missing(),
            )
        )
    return SummaryTable(
        rows=tuple(rows),
        total_params=int(stats.total_params),
        trainable_params=int(stats.trainable_params),
        mult_adds=int(stats.total_mult_adds) // size,
        input_bytes=int(stats.total_input) // size,
        forward_backward_bytes=int(stats.total_output_bytes) // size,
        param_bytes=int(stats.total_param_bytes),
        available=True,
    )


def _leaf_sums(summary_list: Any) -> list[int]:
    """Mult-adds per row: a leaf layer's own; a container's, the sum of the leaf layers listed
    under it (the rows after it, deeper than it). torchinfo's own `macs` of a container counts
    its parameters once per output element (AlexNet's classifier: 58,631,144,000), and its table
    prints "--" there; its total is the sum over leaf layers, so the containers' sums add up to it."""
    macs = [int(info.macs) if info.is_leaf_layer else 0 for info in summary_list]
    depths = [int(info.depth) for info in summary_list]
    sums = []
    for index, info in enumerate(summary_list):
        if info.is_leaf_layer:
            sums.append(macs[index])
            continue
        total, after = 0, index + 1
        while after < len(summary_list) and depths[after] > depths[index]:
            total += macs[after]
            after += 1
        sums.append(total)
    return sums


def _as_input_data(args: Any) -> Any:
    """torchinfo calls model(*list) or model(**dict); a lone tensor becomes a one-item list."""
    if isinstance(args, dict):
        return args
    if isinstance(args, tuple):
        return list(args)
    return args if isinstance(args, list) else [args]


def _type_name(module: nn.Module) -> str:
    """The class name; a TorchScript submodule's is its original (`Conv2d`, not `RecursiveScriptModule`)."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", None) or type(module).__name__)
    return type(module).__name__


def fallback_summary(model: nn.Module, problem: str) -> SummaryTable:
    """A parameters-only table for models torchinfo cannot walk (said plainly in the report)."""
    rows = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        rows.append(
            SummaryRow(
                name=name or model.__class__.__name__,
                type=_type_name(module),
                depth=name.count(".") + 1 if name else 0,
                output_shape=(),
                params=own,
                kernel_size=_kernel(getattr(module, "kernel_size", None)),
                mult_adds=0,
                trainable="--" if own == 0 else str(trainable == own) if trainable in (0, own) else "Partial",
            )
        )
    total = sum(p.numel() for p in model.parameters())
    trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return SummaryTable(
        rows=tuple(rows),
        total_params=total,
        trainable_params=trainable_total,
        mult_adds=0,
        input_bytes=0,
        forward_backward_bytes=0,
        param_bytes=param_bytes,
        available=False,
        problem=problem,
    )
