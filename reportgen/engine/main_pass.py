"""The main pass: every input through the model once, every collector fed from one set of hooks.

`MainPass` owns, for the length of the pass, all of its hooks (one `HookSet`):
- a root pre-hook (call counts reset, `forward_start`) and an always-called root hook
  (`forward_end`, with None when the forward raised);
- one forward hook per module some collector asked for, or that is observed: each module is
  hooked once, and each call's output is handed to every collector that asked for it;
- the `SiteTracker` (sites.py) that follows each selected conv to its activation site, where
  the call is observed: the `Observation` carries the per-row reductions, computed once and
  shared by every collector (and by two calls observed at the same tensor).
The first batch runs inside torchinfo (the summary costs no forward of its own); when torchinfo
cannot walk the model, the batch's staged results are discarded and it runs again plainly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from reportgen.capture import Scratch, first_tensor
from reportgen.engine.collector import Batch, Collector, LayerCall, Observation, _SharedReductions
from reportgen.engine.loop import load_batch, run_batches
from reportgen.errors import ReportError, one_line
from reportgen.faults import is_out_of_memory
from reportgen.hooks import HookSet
from reportgen.inputs import InputSet, call_model
from reportgen.sites import Plan, Site, SiteTracker, call_key
from reportgen.summary import SummaryTable, fallback_summary, summarize
from reportgen.tokens import BLOCK_OUTPUT, MAX_PREFIX, TokenLayout, layout_of, mixing_before

ForwardArgs = Callable[[torch.Tensor], Any] | None


class MainPass:
    """One pass over `inputs` feeding `collectors` (see the module doc). `observed`: the selected
    layers, observed at their sites by `plan` (or raw, `raw_reason` saying why); a layer whose
    output is a transformer's token sequence or channels-last map is observed as maps on its grid
    (tokens.py). `token_blocks`: transformer blocks the default selection added, left out when
    their tokens form no grid."""

    def __init__(self, model: nn.Module, collectors: Sequence[Collector[Any]], *, observed: Sequence[str],
                 plan: Plan | None, raw_reason: str, forward_args: ForwardArgs = None,
                 hookable: bool = True, token_blocks: Sequence[str] = ()) -> None:
        self.model = model
        self.collectors = list(collectors)
        self.observed = list(observed) if hookable else []
        self.plan = plan
        self.raw_reason = raw_reason
        self.forward_args = forward_args
        self.hookable = hookable
        self.summary: SummaryTable | None = None
        self.notes: list[str] = []
        self.fired: set[str] = set()  # module names whose hook ran at least once
        self._calls: dict[str, int] = {}
        self._types: dict[str, tuple[str, int, str]] = {}  # key -> (name, call index, module type)
        self._scratch = Scratch()
        self._tracker: SiteTracker | None = None
        self._observers = [c for c in self.collectors if c.observes]
        self.token_blocks = frozenset(token_blocks)
        self._token_sites: dict[tuple[str, tuple[int, ...]], tuple[TokenLayout | None, Site | None]] = {}
        self._unmapped: dict[str, tuple[int, ...]] = {}  # token blocks whose tokens form no grid
        self._listeners: dict[str, list[Collector[Any]]] = {}
        for collector in self.collectors:
            for name in collector.layers:
                self._listeners.setdefault(name, []).append(collector)

    # -- the pass --
    def run(self, inputs: InputSet, *, device: torch.device, dtype: torch.dtype, batch_size: int,
            progress: Callable[[int], None] | None = None, preloaded: Batch | None = None,
            first: int = 0, count: int | None = None, workers: int = 0) -> None:
        """Inputs first..count-1 (all by default; a share of them keeps its global indices);
        `workers`: processes decoding the next batches meanwhile (engine/prefetch.py)."""
        try:
            with self.attached():
                run_batches(inputs, lambda batch: self.step(batch, inputs), device=device, dtype=dtype,
                            batch_size=batch_size, first=first, count=count, transaction=self, progress=progress,
                            notes=self.notes, preloaded=preloaded, workers=workers)
        finally:
            self.finish()

    @contextmanager
    def attached(self) -> Iterator[MainPass]:
        """The pass's hooks (and site tracker), attached for the `with` block and removed after,
        also when it raises. A pass that runs several models on each batch (compare_pass.py)
        attaches each model's only around that model's forward (`step`)."""
        with ExitStack() as stack:
            if self.hookable:
                self._attach(stack.enter_context(HookSet()))
                if self.plan:
                    self._tracker = stack.enter_context(SiteTracker(self.model, self._on_site, self.plan))
            try:
                yield self
            finally:
                self._tracker = None

    def finish(self) -> None:
        """After the last batch: the scratch buffers go, the summary is there."""
        self._scratch.release()
        if self._unmapped:
            shapes = ", ".join(f"{name} {list(shape)}" for name, shape in sorted(self._unmapped.items())[:4])
            more = f" and {len(self._unmapped) - 4} more" if len(self._unmapped) > 4 else ""
            note = (f"Transformer block output(s) whose tokens form no square grid (after at most "
                    f"{MAX_PREFIX} leading tokens) are not drawn: {shapes}{more}.")
            if note not in self.notes:
                self.notes.append(note)
        if self.summary is None:  # no batch ran (cannot happen with inputs, kept for clarity)
            self.summary = fallback_summary(self.model, "no input was run")

    def layer_order(self) -> dict[str, int]:
        """Observed layer call keys in the order they first ran."""
        return {key: i for i, key in enumerate(self._types)}

    # -- Transaction (engine/loop.py) over every collector --
    def begin(self, batch: Batch) -> None:
        for collector in self.collectors:
            collector.begin(batch)

    def commit(self) -> None:
        for collector in self.collectors:
            collector.commit()

    def discard(self) -> None:
        self._calls.clear()
        for collector in self.collectors:
            collector.discard()

    def retry(self, exc: BaseException) -> bool:
        return any([collector.retry(exc) for collector in self.collectors])  # every one is told

    def step(self, batch: Batch, inputs: InputSet) -> None:
        """One batch through the model with every collector (inside `attached`, after `begin`)."""
        with ExitStack() as stack:
            for collector in self.collectors:
                stack.enter_context(collector.batch_context(batch))
            if batch.tensor.is_inference() and not torch.is_inference_mode_enabled():
                # a collector left inference mode (Grad-CAM): autograd cannot use an inference tensor
                batch = replace(batch, tensor=batch.tensor.clone())
            if not self.hookable:
                self.summary = self.summary or fallback_summary(
                    self.model, "PyTorch cannot attach hooks to a TorchScript module")
                output = self._forward(batch, inputs)
                for collector in self.collectors:  # no hooks: the root events are called here
                    collector.forward_start()
                    collector.forward_end(output)
                return
            if self.summary is None:
                self.summary = self._first_pass(batch, inputs)
                return
            self._forward(batch, inputs)

    def _forward(self, batch: Batch, inputs: InputSet) -> Any:
        try:
            return call_model(self.model, batch.tensor, self.forward_args)
        except ReportError:
            raise
        except Exception as exc:
            raise model_failure(exc, batch, inputs) from exc

    def _first_pass(self, batch: Batch, inputs: InputSet) -> SummaryTable:
        """The first batch runs inside torchinfo, so the summary costs no forward pass of its own."""
        try:
            if self.forward_args is not None:
                return summarize(self.model, batch.tensor, input_data=self.forward_args(batch.tensor))
            return summarize(self.model, batch.tensor)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise  # the loop halves the batch and runs this again
            cause = exc.__cause__ or exc
        # torchinfo failed: what its walk staged is dropped and the batch runs plainly
        self.discard()
        self.begin(batch)
        self.model.eval()
        self._forward(batch, inputs)
        self.notes.append(f"torchinfo could not walk this model ({one_line(cause)}); "
                          "the table lists parameters only.")
        return fallback_summary(self.model, one_line(cause))

    # -- hooks --
    def _attach(self, hooks: HookSet) -> None:
        modules = dict(self.model.named_modules())
        hooks.pre(self.model, self._forward_start)
        hooks.forward(self.model, self._forward_end, always_call=True)
        for name in dict.fromkeys([*self.observed, *self._listeners]):
            if name in modules:
                hooks.forward(modules[name], self._layer_hook(name), with_kwargs=True)

    def _forward_start(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()
        with torch._C.DisableTorchFunction():  # the site tracker need not follow the collectors
            for collector in self.collectors:
                collector.forward_start()

    def _forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        with torch._C.DisableTorchFunction():
            for collector in self.collectors:
                collector.forward_end(output)

    def _layer_hook(self, name: str) -> Callable[[nn.Module, Any, Any, Any], None]:
        listeners = self._listeners.get(name, [])
        observed = name in self.observed

        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            self.fired.add(name)
            key = call_key(name, index)
            with torch._C.DisableTorchFunction():
                if listeners:
                    call = LayerCall(name, index, key, module, args, output, kwargs)
                    for collector in listeners:
                        collector.layer_call(call)
            if observed:
                self._observed_call(name, index, key, module, output)

        return hook

    def _observed_call(self, name: str, index: int, key: str, module: nn.Module, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None or tensor.dim() < 1 or not tensor.is_floating_point():
            return
        layout, site = self._token_site(key, name, module, tuple(tensor.shape))
        if site is None and name in self.token_blocks and tensor.dim() == 3:
            self._unmapped.setdefault(name, tuple(tensor.shape))  # tokens on no grid: not drawn
            return
        self._types.setdefault(key, (name, index, type(module).__name__))
        if site is not None:  # a transformer's output, as maps
            with torch._C.DisableTorchFunction():
                self._observe([(key, site)], layout.maps(tensor) if layout is not None else tensor)
            return
        if self._tracker is not None and key in self._tracker.plan:
            self._tracker.watch(tensor, key)  # observed at its site: `_on_site`
            return
        reason = self.raw_reason if self._tracker is None else "its path was not traced on the first input"
        with torch._C.DisableTorchFunction():
            self._observe([(key, Site(raw=reason))], tensor)

    def _token_site(self, key: str, name: str, module: nn.Module,
                    shape: tuple[int, ...]) -> tuple[TokenLayout | None, Site | None]:
        """A transformer output's layout (tokens.py) and site, decided once per layer call and
        output shape: (None, None) for any other output; (None, site) for a transformer block
        whose output is already channels first."""
        if (key, shape) not in self._token_sites:
            layout = layout_of(module, shape)
            site = None
            if layout is not None:
                mixing = mixing_before(self.model, name)
                site = Site(layout=layout.describe(shape, mixing), grid=layout.grid, mixing=mixing)
            elif name in self.token_blocks and len(shape) != 3:
                site = Site(layout=BLOCK_OUTPUT)
            self._token_sites[(key, shape)] = (layout, site)
        return self._token_sites[(key, shape)]

    def _on_site(self, arrivals: Sequence[tuple[str, Site]], tensor: torch.Tensor) -> None:
        self._observe(arrivals, tensor)

    def _observe(self, arrivals: Sequence[tuple[str, Site]], tensor: torch.Tensor) -> None:
        shared = _SharedReductions(tensor, self._scratch)  # one per tensor: reduced once
        for key, site in arrivals:
            name, index, module_type = self._types[key]
            observation = Observation(key, name, index, module_type, site, tensor, shared)
            for collector in self._observers:
                collector.observe(observation)


def model_failure(exc: BaseException, batch: Batch, inputs: InputSet) -> ReportError:
    """The one-line error for a model that raised on a batch, naming its inputs."""
    start, stop = batch.start, batch.stop
    where = inputs.names[start] if stop - start == 1 else f"{inputs.names[start]} .. {inputs.names[stop - 1]}"
    return ReportError(f"the model failed on input batch {where} of shape {list(batch.tensor.shape)}: {one_line(exc)}")


__all__ = ["MainPass", "load_batch", "model_failure"]
