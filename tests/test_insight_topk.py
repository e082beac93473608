"""Dataset-wide top activations: the constructed inputs are found, in order, at their peaks, and
the state kept per channel does not grow with the number of inputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import reportgen
from reportgen.inputs import from_tensor
from reportgen.summary import summarize
from reportgen.top_activations import (
    CROP_SIZE,
    Geometry,
    crop,
    display_image,
    layer_geometry,
    window,
)
from tests.fixtures.insight_models import SpotDetector, spot_dataset
from tests.helpers import run_main_pass, decode

PLANTED = {7: (5.0, 3, 4), 19: (9.0, 8, 2), 33: (7.0, 5, 9)}  # index: (value, y, x)


def test_top_k_finds_the_constructed_inputs_in_order() -> None:
    images = spot_dataset(40, PLANTED)
    report = reportgen.generate_report(SpotDetector(), images, device="cpu", batch_size=8, max_inputs_shown=4,
                                       top_k=3)
    section = report.model.sections[0]
    spot = section.insight.top_activations[0]
    assert spot.channel == 0
    assert spot.inputs == (19, 33, 7)  # by strength, across batches of 8
    assert spot.names == ("input-19", "input-33", "input-07")
    assert spot.peaks == ((8, 2), (5, 9), (3, 4))
    # the score is the channel's max: the spot value minus 1/8 of its dim ring
    for index, score in zip(spot.inputs, spot.scores):
        value, y, x = PLANTED[index]
        ring = images[index, 0, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].sum() - value
        assert abs(score - (value - float(ring) / 8)) < 1e-5
    # JSON has the same
    top_json = report.to_dict()["visualized"][0]["insight"]["top_activations"][0]
    assert top_json["inputs"] == [19, 33, 7] and top_json["peaks"] == [[8, 2], [5, 9], [3, 4]]


def test_top_k_equals_brute_force_for_every_channel() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2))
    images = torch.randn(50, 3, 10, 10)
    capture, _ = run_main_pass(model, ["0", "2"], images, batch_size=7,  # uneven batches
                               max_channels=4, tile_size=8, keep_inputs=2, top_k=4,
                               peak_channels=3)  # peaks looked up for channels 0-2 only
    layers = {layer.key: layer for layer in capture.results()}
    with torch.no_grad():
        outputs = {"0": model[0](images), "2": model[2](model[1](model[0](images)))}
    for key, output in outputs.items():
        flat = output.flatten(2)  # (N, C, S)
        layer = layers[key]
        assert layer.top_scores.shape == (4, 4)  # shown channels x k, whatever N is
        for channel in range(4):
            per_input, positions = flat[:, channel].max(dim=1)
            order = torch.argsort(per_input, descending=True, stable=True)[:4]
            assert layer.top_inputs[channel].tolist() == order.tolist()
            np.testing.assert_allclose(layer.top_scores[channel], per_input[order].numpy(), rtol=1e-6)
            expected = positions[order].tolist() if channel < 3 else [-1] * 4
            assert layer.top_positions[channel].tolist() == expected


def test_state_is_flat_in_the_number_of_inputs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3))
    sizes = []
    for count in (8, 64):
        capture, _ = run_main_pass(model, ["0"], torch.randn(count, 1, 6, 6), batch_size=4, max_channels=3,
                                   tile_size=4, keep_inputs=1, top_k=5)
        layer = capture.results()[0]
        sizes.append((layer.top_scores.shape, layer.top_inputs.shape, layer.top_positions.shape, len(layer.tiles)))
    assert sizes[0] == sizes[1] == (((3, 5),) * 3 + (1,))


def test_receptive_field_of_a_conv_pool_chain() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1),
                          nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 2))
    # 33 pixels: the maps are 33, 17, 8 and 8 cells, sizes that do not divide
    report = reportgen.generate_report(model, torch.rand(2, 1, 33, 33), device="cpu")
    fields = {s.name: (s.insight.receptive_field, s.insight.stride, s.insight.first_pixel)
              for s in report.model.sections}
    # field 3; 3 + 2*1 = 5; pool: 5 + 1*2 = 7; 7 + 2*4 = 15. First pixel: -1 (padding 1);
    # -1 - 1*1 = -2; the pool adds no padding; -2 - 1*4 = -6
    assert fields == {"0": ((3, 3), (1, 1), (-1, -1)), "1": ((5, 5), (2, 2), (-2, -2)),
                      "3": ((15, 15), (4, 4), (-6, -6))}
    assert "receptive field</th><td>15x15 px, stride 4x4, the first cell's window starts at (-6, -6) in the padding" \
        in report.to_html().replace("\n", "").replace("&#39;", "'")


def test_window_and_crop_geometry() -> None:
    geometry = Geometry(receptive_field=(5, 5), stride=(2, 2), first=(-2, -2))  # a 5x5 conv, stride 2, padding 2
    assert window((3, 0), geometry, (16, 16)) == (4, 0, 9, 3)  # pixels 4..8 and -2..2: clipped at the left edge
    image = torch.zeros(3, 16, 16)
    image[:, 6, 6] = 1.0
    pixels = crop(image, (4, 4, 9, 9), size=5)
    assert pixels.shape == (5, 5, 3) and pixels[2, 2].tolist() == [255, 255, 255] and pixels.sum() == 3 * 255


def test_crops_cut_together_equal_each_box_scaled_on_its_own() -> None:
    """Dataset mode cuts a batch's crops together (boxes of one size scaled in one call); each
    must equal its box area-averaged (or, when smaller than the crop, nearest-neighbour scaled)
    on its own, computed here with plain torch, and small windows are cut with their context."""
    from reportgen.top_activations import MIN_CROP_WINDOW, context_box, crops_in_context

    rng = np.random.default_rng(0)
    images = [torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    requests = []
    for _ in range(120):
        top, left = int(rng.integers(0, 39)), int(rng.integers(0, 49))
        requests.append((int(rng.integers(0, 3)), (top, left, min(40, top + int(rng.integers(1, 40))),
                                                   min(50, left + int(rng.integers(1, 50))))))
    pictures = crops_in_context([images[i] for i, _ in requests], [box for _, box in requests], CROP_SIZE)
    for (i, box), picture in zip(requests, pictures):
        top, left, bottom, right = context_box(box, 40, 50, MIN_CROP_WINDOW)
        piece = images[i][None, :, top:bottom, left:right]
        if bottom - top >= CROP_SIZE and right - left >= CROP_SIZE:
            scaled = torch.nn.functional.adaptive_avg_pool2d(piece, CROP_SIZE)[0]
        else:
            scaled = torch.nn.functional.interpolate(piece, size=(CROP_SIZE, CROP_SIZE), mode="nearest")[0]
        expected = np.floor(scaled.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
        if (top, left, bottom, right) != box:  # widened for context: the outline is drawn over it
            inside = np.ones((CROP_SIZE, CROP_SIZE), dtype=bool)
            outlined = np.all((picture == 255) | (picture == 0), axis=2)
            inside &= ~outlined
            assert np.array_equal(picture[inside], expected[inside])
        else:
            assert np.array_equal(picture, expected)


def test_dataset_mode_draws_crops_around_the_peak() -> None:
    images = spot_dataset(40, PLANTED)
    report = reportgen.generate_report(SpotDetector(), images, device="cpu", batch_size=8, max_inputs_shown=4,
                                       top_k=3)
    insight = report.model.sections[0].insight
    assert insight.top_strip is not None and insight.top_strip_channels == (0, 1)
    strip = np.asarray(decode(insight.top_strip).convert("RGB"))
    # row 0 (channel 0), column 0 (input 19): a CROP_SIZE crop after 1 px of padding. The peak
    # cell sees the 3x3 window rows 7-9, columns 1-3; under 12 px a side it is cut with context:
    # 12x12 px, here the whole 12x12 input, drawn 2x. The spot (8, 2) lands at (16, 4).
    crop_rgb = strip[1:1 + CROP_SIZE, 1:1 + CROP_SIZE].astype(int)
    inside = crop_rgb[15:19, 3:7].min(axis=2)  # within the window's outline (rows 14..19, cols 2..7)
    spot = np.zeros((4, 4), dtype=bool)
    spot[1:3, 1:3] = True  # input pixel (8, 2) -> crop pixels 16..17, 4..5
    assert (inside[spot] == 255).all() and inside[~spot].max() < 128
    # the outline: 1 px, alternately white and black
    ring = [(r, c) for r in (14, 19) for c in range(2, 8)] + [(r, c) for r in range(15, 19) for c in (2, 7)]
    assert all(crop_rgb[r, c].tolist() == ([255] * 3 if (r + c) % 2 == 0 else [0] * 3) for r, c in ring)
    assert strip.shape == (1 + 2 * (CROP_SIZE + 1), 1 + 3 * (CROP_SIZE + 1), 3)  # 2 channels x top-3
    # with no more inputs than are drawn, no crops (the feature maps already show every input)
    few = reportgen.generate_report(SpotDetector(), images[:4], device="cpu", max_inputs_shown=4, top_k=3)
    assert few.model.sections[0].insight.top_strip is None
    assert len(few.model.sections[0].insight.top_activations[0].inputs) == 3
    off = reportgen.generate_report(SpotDetector(), images, device="cpu", max_inputs_shown=4, top_k=0)
    assert off.model.sections[0].insight.top_activations == () and off.model.sections[0].insight.top_strip is None


def test_display_image_denormalises_like_thumbnails() -> None:
    images = from_tensor(torch.full((1, 3, 4, 4), 0.25))
    shown = display_image(images.load(0), images)
    assert shown is not None and torch.allclose(shown, torch.full((3, 4, 4), 0.25))
    gray = from_tensor(torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4))
    stretched = display_image(gray.load(0), gray)
    assert stretched.shape == (3, 4, 4) and float(stretched.min()) == 0.0 and float(stretched.max()) == 1.0


def test_geometry_of_a_stride_two_conv_on_an_odd_input() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2))
    capture, main = run_main_pass(model, ["0"], torch.rand(1, 1, 9, 9), batch_size=1, max_channels=1, tile_size=4,
                                  keep_inputs=1, top_k=1)
    rows = main.summary.rows
    geometry = layer_geometry(rows, capture.results())
    # 9 pixels into 4 cells: each cell still sees 3 pixels, 2 apart (not 9/4 apart, 7 wide)
    assert (geometry["0"].stride, geometry["0"].receptive_field, geometry["0"].first) == ((2, 2), (3, 3), (0, 0))
    # without the summary's forward pass the geometry is not guessed
    assert not layer_geometry((), capture.results())["0"].known


def test_crops_cut_during_the_pass_equal_reloaded_ones_and_no_input_is_loaded_twice(monkeypatch) -> None:
    from reportgen import collectors
    from reportgen.inputs import InputSet

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images = torch.rand(60, 3, 40, 40, generator=torch.Generator().manual_seed(8))
    loads: list[int] = []
    original_load = InputSet.load

    def counted(self: InputSet, index: int) -> torch.Tensor:
        loads.append(index)
        return original_load(self, index)

    monkeypatch.setattr(InputSet, "load", counted)
    during = reportgen.generate_report(model, images, device="cpu", batch_size=7, max_inputs_shown=4, top_k=4)
    assert sorted(loads) == list(range(60))  # each input once: no winner reloaded for its crop
    loads.clear()
    monkeypatch.setattr(collectors, "TopCropCollector", lambda *args, **kwargs: None)
    reloaded = reportgen.generate_report(model, images, device="cpu", batch_size=7, max_inputs_shown=4, top_k=4)
    assert len(loads) > 60  # the winners were loaded again
    strips = [(a.insight.top_strip, b.insight.top_strip) for a, b in zip(during.model.sections, reloaded.model.sections)]
    assert len(strips) == 3 and all(a is not None for a, _ in strips)
    assert all(a == b for a, b in strips)  # the same pixels, bit for bit


def test_crop_collector_keeps_only_current_winners() -> None:
    from reportgen.top_activations import CropCollector

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
    images = torch.rand(90, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    inputs = from_tensor(images)
    from reportgen.collectors.activations import ActivationCollector
    from reportgen.collectors.crops import TopCropCollector

    capture = ActivationCollector(max_channels=6, tile_size=8, keep_inputs=2, top_k=3, peak_channels=2)
    collector = CropCollector(model, inputs, channels=2)
    checked = []

    class Checked(TopCropCollector):
        def commit(self) -> None:  # after each batch: only current winners keep a crop
            super().commit()
            winners = capture.winners(collector.channels)
            current = {(w.key, row, int(i)) for w in winners for row, r in enumerate(w.inputs) for i in r}
            assert set(collector.crops) <= current and len(collector.crops) <= 2 * 2 * 3
            checked.append(len(collector.crops))

    from reportgen.engine.main_pass import MainPass
    from reportgen.sites import RAW_BY_REQUEST

    rows: list = []
    crops = Checked(collector, capture, lambda: rows)
    main = MainPass(model, [capture, crops], observed=["0", "2"], plan=None, raw_reason=RAW_BY_REQUEST)

    original_commit = crops.commit

    def commit() -> None:  # the first batch's forward is the summary's, as in analyze
        rows[:] = main.summary.rows
        original_commit()

    crops.commit = commit
    with torch.inference_mode():
        main.run(inputs, device=torch.device("cpu"), dtype=torch.float32, batch_size=10)
    assert len(checked) == 9
    assert len(collector.crops) == 2 * 2 * 3  # every winner of the 2 layers x 2 channels x top-3 has its crop


def test_top_k_ties_go_to_the_earlier_input() -> None:
    # Inputs 1, 6, 7 and 10 are the same image, brighter than all others: for every channel they
    # tie at the top. Ranked by index: across batches (1 | 6, 7 | 10, batches of 4) and inside one.
    model = nn.Sequential(nn.Conv2d(1, 3, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(5)) + 0.1)
        model[0].bias.zero_()
    images = torch.rand(12, 1, 9, 9, generator=torch.Generator().manual_seed(6)) * 0.5
    bright = images[3] + 2.0
    tied = (1, 6, 7, 10)
    for index in tied:
        images[index] = bright
    with torch.no_grad():
        per_input = model(images).amax(dim=(2, 3))  # (N, C): the score each input ranks by
    for k in (3, 5):
        report = reportgen.generate_report(model, images, device="cpu", batch_size=4, max_inputs_shown=2, top_k=k)
        tops = report.model.sections[0].insight.top_activations
        assert len(tops) == 3
        for top in tops:
            expected = sorted(range(12), key=lambda i: (-float(per_input[i, top.channel]), i))[:k]
            assert expected[: min(k, 4)] == list(tied[:k])  # the ties are the top: the check is about them
            assert list(top.inputs) == expected
