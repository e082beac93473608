"""The demo model, its procedural data and its shipped checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.demo import (
    CLASS_NAMES,
    DEMO_MEAN,
    DEMO_STD,
    IMAGE_SIZE,
    build_demo_model,
    demo_samples,
    load_demo_model,
    make_dataset,
    make_sample,
)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(DEMO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.mark.parametrize("class_index", range(len(CLASS_NAMES)))
def test_make_sample_is_a_float_image_in_unit_range(class_index: int) -> None:
    image = make_sample(class_index, np.random.default_rng(0))

    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # A blank or constant image would teach the network nothing.
    assert image.std() > 0.05


def test_make_sample_rejects_an_unknown_class() -> None:
    with pytest.raises(ValueError, match="class_index"):
        make_sample(len(CLASS_NAMES), np.random.default_rng(0))


def test_make_dataset_is_deterministic_and_balanced() -> None:
    images, labels = make_dataset(3, seed=7)
    again_images, again_labels = make_dataset(3, seed=7)
    other_images, _ = make_dataset(3, seed=8)

    assert images.shape == (3 * len(CLASS_NAMES), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(images, again_images)
    assert torch.equal(labels, again_labels)
    assert not torch.equal(images, other_images)
    assert torch.bincount(labels).tolist() == [3] * len(CLASS_NAMES)


def test_demo_samples_are_deterministic() -> None:
    images, labels, names = demo_samples()
    again_images, again_labels, again_names = demo_samples()

    assert torch.equal(images, again_images)
    assert labels == again_labels
    assert names == again_names
    assert not torch.equal(images, demo_samples(seed=1)[0])


def test_demo_samples_cover_every_class_with_stable_names() -> None:
    images, labels, names = demo_samples(count=10)

    assert images.shape == (10, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert images.is_contiguous()
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(labels) == set(range(len(CLASS_NAMES)))
    assert names[0] == "sample-00-horizontal-stripes"
    assert names[CLASS_NAMES.index("red disc")] == "sample-05-red-disc"
    assert names[3] == "sample-03-anti-diagonal-stripes"
    assert len(set(names)) == len(names)


def test_demo_samples_rejects_an_empty_request() -> None:
    with pytest.raises(ValueError, match="count"):
        demo_samples(count=0)


def test_build_demo_model_has_meaningful_layer_names_and_output_size() -> None:
    model = build_demo_model()
    names = {name for name, _ in model.named_modules()}

    assert {"features.conv1", "features.bn1", "features.relu1", "classifier"} <= names
    assert model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, len(CLASS_NAMES))


def test_load_demo_model_returns_an_eval_mode_cpu_model() -> None:
    model = load_demo_model()

    assert not model.training
    assert all(not module.training for module in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.state_dict().keys() == build_demo_model().state_dict().keys()


def test_shipped_checkpoint_classifies_unseen_images() -> None:
    images, labels = make_dataset(20, seed=999)
    model = load_demo_model()

    with torch.no_grad():
        predictions = model(_normalise(images)).argmax(dim=1)

    accuracy = float((predictions == labels).float().mean())
    assert accuracy >= 0.9, f"demo checkpoint accuracy {accuracy:.3f} on unseen images"
