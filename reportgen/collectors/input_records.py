"""Input records: each input's name, shape, true class and, for the drawn inputs, the thumbnail
of what the model saw (thumbnails.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reportgen import thumbnails
from reportgen.analysis import InputRecord
from reportgen.engine.collector import Batch, Collector
from reportgen.inputs import InputSet


@dataclass
class RecordState:
    records: dict[int, InputRecord] = field(default_factory=dict)

    def merge(self, other: RecordState) -> None:
        self.records.update(other.records)


class InputRecordCollector(Collector[RecordState]):
    def __init__(self, inputs: InputSet, *, keep_inputs: int) -> None:
        super().__init__()
        self.inputs = inputs
        self.keep_inputs = keep_inputs

    def empty(self) -> RecordState:
        return RecordState()

    def begin(self, batch: Batch) -> None:
        super().begin(batch)
        for row in range(batch.size):
            index = batch.start + row
            drawn = thumbnails.draw(batch.host[row], self.inputs.preprocessing) if index < self.keep_inputs else None
            self.staged.records[index] = InputRecord(
                index=index, name=self.inputs.names[index], shape=tuple(int(d) for d in batch.host.shape[1:]),
                label=batch.labels[row], thumbnail=drawn.picture if drawn is not None else None,
                spectrogram=thumbnails.spectrogram(batch.host[row]) if index < self.keep_inputs else None,
                notes=(*self.inputs.notes_for(index), *([drawn.note] if drawn is not None and drawn.note else [])),
            )

    def records(self) -> tuple[InputRecord, ...]:
        return tuple(self.state.records[i] for i in sorted(self.state.records))
