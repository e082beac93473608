"""--images DIR (every grid as a PNG, stable names, atomic) and --tensorboard DIR."""

from __future__ import annotations

import importlib.util
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.cli import main
from reportgen.errors import ReportError
from reportgen.exports import TENSORBOARD_HINT, image_files
from reportgen.grids import decode_data_uri
from tests.fixtures.models import tiny_cnn, tiny_inputs

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3),
                             nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(5, 3))
    """
)


@pytest.fixture(scope="module")
def report() -> reportgen.Report:
    return reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (tmp_path / "net.py").write_text(MODEL_FILE, encoding="utf-8")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (18, 18, 3), dtype=np.uint8)).save(
            tmp_path / f"img{i}.png"
        )
    return tmp_path


def test_images_are_the_report_pictures_with_stable_names(
    report: reportgen.Report, tmp_path: Path
) -> None:
    report.save(tmp_path / "r.html", images_dir=tmp_path / "grids")
    written = sorted(p.name for p in (tmp_path / "grids").iterdir())
    sections = report.model.sections
    expected = sorted(
        [f"filters--{s.anchor}.png" for s in sections if s.filters]
        + [f"maps--{s.anchor}--{fm.input_index:03d}.png" for s in sections for fm in s.feature_maps]
        + [f"input--{i.index:03d}.png" for i in report.model.inputs if i.thumbnail]
    )
    assert written == expected
    assert "maps--layer-0--001.png" in written and "filters--layer-2.png" in written
    # each file holds the pixels the report shows: same palette indices, same size
    grid = sections[1].feature_maps[1].grid
    on_disk = Image.open(tmp_path / "grids" / f"maps--{sections[1].anchor}--001.png")
    embedded = Image.open(io.BytesIO(decode_data_uri(grid.image.data_uri)))
    assert on_disk.size == (grid.image.width, grid.image.height)
    assert np.array_equal(np.asarray(on_disk), np.asarray(embedded))
    assert on_disk.getpalette() == embedded.getpalette()
    # no temporary files are left next to them
    assert not [p for p in (tmp_path / "grids").iterdir() if p.name.startswith(".")]


def test_same_report_same_files(report: reportgen.Report, tmp_path: Path) -> None:
    first = {name: image.sha256 for name, image in image_files(report.model).items()}
    again = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")
    assert {name: image.sha256 for name, image in image_files(again.model).items()} == first


def test_failed_save_leaves_no_images_folder(report: reportgen.Report, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="output folder does not exist"):
        report.save(tmp_path / "missing" / "r.html", images_dir=tmp_path / "grids")
    assert not (tmp_path / "grids").exists()
    assert list(tmp_path.iterdir()) == []


def test_images_folder_that_is_a_file_is_a_user_error(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "grids").write_text("not a folder", encoding="utf-8")
    assert main(["net.py:build", "img0.png", "-o", "r.html", "--images", "grids"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "reportgen: error: --images grids is a file, not a folder"
    assert not (workspace / "r.html").exists()


def test_cli_images(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["net.py:build", "img0.png", "img1.png", "-o", "r.html", "--images", "out/grids", "-q"]
        )
        == 2
    )
    assert "--images: folder out does not exist" in capsys.readouterr().err
    assert (
        main(["net.py:build", "img0.png", "img1.png", "-o", "r.html", "--images", "grids", "-q"])
        == 0
    )
    names = sorted(p.name for p in (workspace / "grids").iterdir())
    assert names == [
        "filters--layer-0.png",
        "filters--layer-2.png",
        "input--000.png",
        "input--001.png",
        "maps--layer-0--000.png",
        "maps--layer-0--001.png",
        "maps--layer-2--000.png",
        "maps--layer-2--001.png",
    ]
    # a 4-filter conv on 3 channels: the RGB filter grid is 2x2 tiles of 3x3 px with 1 px padding
    assert Image.open(workspace / "grids" / "filters--layer-0.png").size == (9, 9)


def test_missing_tensorboard_is_a_clear_error(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        sys.modules, "tensorboard", None
    )  # `import tensorboard` now raises ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    assert main(["net.py:build", "img0.png", "-o", "r.html", "--tensorboard", "tb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"reportgen: error: {TENSORBOARD_HINT}"
    assert "pip install tensorboard" in err
    assert not (workspace / "r.html").exists() and not (workspace / "tb").exists()


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the optional tensorboard package is not installed")
def test_tensorboard_events_hold_the_grids_and_histograms(workspace: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (
        main(["net.py:build", "img0.png", "img1.png", "-o", "r.html", "--tensorboard", "tb", "-q"])
        == 0
    )
    events = list((workspace / "tb").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    accumulator = EventAccumulator(
        str(workspace / "tb"), size_guidance={"images": 0, "histograms": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    assert set(tags["images"]) == {
        "filters/0",
        "filters/2",
        "maps/0/000",
        "maps/0/001",
        "maps/2/000",
        "maps/2/001",
        "inputs/000",
        "inputs/001",
    }
    assert "stats/2/mean" in tags["histograms"] and "stats/0/fraction_active" in tags["histograms"]
    image = accumulator.Images("filters/0")[0]
    assert (image.width, image.height) == (9, 9)
    histogram = accumulator.Histograms("stats/2/max")[0].histogram_value
    assert histogram.num == 5  # one value per channel of the 5-channel conv
