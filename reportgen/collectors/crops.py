"""Top-k crops cut during the main pass (dataset mode), while each batch is in memory
(top_activations.CropCollector cuts them; this collector runs it after each committed batch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from reportgen.collectors.activations import ActivationCollector
from reportgen.engine.collector import Collector
from reportgen.summary import SummaryRow
from reportgen.top_activations import CropCollector

Crops = dict[tuple[str, int, int], tuple[tuple[int, ...], np.ndarray]]  # (layer key, row, input) -> (box, crop)


@dataclass
class CropState:
    crops: Crops = field(default_factory=dict)

    def merge(self, other: CropState) -> None:
        self.crops.update(other.crops)


class TopCropCollector(Collector[CropState]):
    """After a batch commits (the activations' top-k are then up to date), cut the crops of the
    winners it holds. Listed after `activations` so that it commits after them."""

    def __init__(self, cutter: CropCollector, activations: ActivationCollector,
                 summary_rows: Callable[[], Sequence[SummaryRow]]) -> None:
        super().__init__()
        self.cutter = cutter
        self.cutter.crops = self.state.crops
        self.activations = activations
        self.summary_rows = summary_rows

    def empty(self) -> CropState:
        return CropState()

    def commit(self) -> None:
        batch = self.batch
        super().commit()
        if batch is not None:
            self.cutter.update(self.activations.winners(self.cutter.channels), self.summary_rows(), batch.host,
                               batch.start)

    @property
    def crops(self) -> Crops:
        return self.state.crops
