"""The per-class view when labels are known: accuracy, confusion matrix, the inputs gotten wrong.

Built from the prediction records (top-k classes of every input, kept by `analyze`), so it
covers every input, not only the shown ones. The confusion heatmap shows at most
`MAX_MATRIX_CLASSES` classes (the most frequent true classes, then the most predicted); the
JSON holds every (true, predicted, count) pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reportgen import svg
from reportgen.report_model import ClassRow, Misclassified, PerClass, TopClass

if TYPE_CHECKING:
    from reportgen.analysis import PredictionRecord

MAX_MATRIX_CLASSES = 20
MAX_WRONG = 200  # misclassified inputs listed (the count covers all)


def per_class(
    predictions: Sequence[PredictionRecord],
    names: dict[int, str],
    label_of: Callable[[int | None], str | None],
) -> PerClass | None:
    """None when no input has a label."""
    labelled = [p for p in predictions if p.label is not None and p.top_indices]
    if not labelled:
        return None
    pairs = Counter((int(p.label), int(p.top_indices[0])) for p in labelled)  # type: ignore[arg-type]
    true_counts = Counter(int(p.label) for p in labelled)  # type: ignore[arg-type]
    correct_counts = Counter(int(p.label) for p in labelled if p.top_indices[0] == p.label)  # type: ignore[arg-type]
    predicted_counts = Counter(int(p.top_indices[0]) for p in labelled)
    correct = sum(correct_counts.values())

    def name(index: int) -> str:
        return label_of(index) or str(index)

    classes = tuple(
        ClassRow(index=c, label=name(c), count=true_counts[c], correct=correct_counts[c],
                 accuracy=correct_counts[c] / true_counts[c])
        for c in sorted(true_counts)
    )
    ranked = sorted(true_counts, key=lambda c: (-true_counts[c], c))
    extra = sorted((c for c in predicted_counts if c not in true_counts), key=lambda c: (-predicted_counts[c], c))
    shown = sorted((ranked + extra)[:MAX_MATRIX_CLASSES])
    matrix = tuple(tuple(pairs.get((t, p), 0) for p in shown) for t in shown)
    wrong = tuple(
        Misclassified(
            input_index=p.index,
            input_name=names.get(p.index, str(p.index)),
            true_label=name(int(p.label)),  # type: ignore[arg-type]
            top=tuple(TopClass(index=i, label=name(i), probability=v)
                      for i, v in zip(p.top_indices[:3], p.top_probabilities[:3])),
        )
        for p in labelled
        if p.top_indices[0] != p.label
    )
    hidden = len(set(true_counts) | set(predicted_counts)) - len(shown)
    title = "confusion matrix: rows true class, columns predicted class"
    if hidden > 0:
        title += f" ({hidden} less frequent classes not shown)"
    return PerClass(
        labelled=len(labelled),
        correct=correct,
        accuracy=correct / len(labelled),
        classes=classes,
        confusion_classes=tuple(shown),
        confusion=matrix,
        confusion_pairs=tuple((t, p, n) for (t, p), n in sorted(pairs.items())),
        wrong=wrong[:MAX_WRONG],
        chart=svg.heatmap(matrix, [name(c) for c in shown], title=title),
    )
