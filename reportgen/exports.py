"""Exports beside the HTML: every grid as a PNG file (`--images DIR`), or as TensorBoard events
(`--tensorboard DIR`, only when the optional `tensorboard` package is installed).

The PNGs are the exact bytes embedded in the report (decoded from their data: URIs), named
from the layer's anchor and the input's index, so names are stable from run to run:
`filters--<anchor>.png`, `maps--<anchor>--<input-index>.png`, `input--<input-index>.png`, and for a
transformer layer `tokens-norm--<anchor>--<input-index>.png` and `tokens-pca--<anchor>--<input-index>.png`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reportgen.errors import ReportError
from reportgen.grids import decode_data_uri
from reportgen.report_model import EncodedImage, ReportModel

TENSORBOARD_HINT = "--tensorboard needs the optional tensorboard package: pip install tensorboard"


def image_files(model: ReportModel) -> dict[str, EncodedImage]:
    """File name -> picture, for every grid (and input thumbnail) in the report."""
    files: dict[str, EncodedImage] = {}
    for section in model.sections:
        if section.filters is not None:
            files[f"filters--{section.anchor}.png"] = section.filters.image
        for fm in section.feature_maps:
            files[f"maps--{section.anchor}--{fm.input_index:03d}.png"] = fm.grid.image
        for tokens in section.token_pictures:
            files[f"tokens-norm--{section.anchor}--{tokens.input_index:03d}.png"] = tokens.norm
            if tokens.pca is not None:
                files[f"tokens-pca--{section.anchor}--{tokens.input_index:03d}.png"] = tokens.pca
    for item in model.inputs:
        if item.thumbnail is not None:
            files[f"input--{item.index:03d}.png"] = item.thumbnail
    return files


def image_outputs(model: ReportModel, folder: Path) -> dict[Path, bytes]:
    """What `--images DIR` writes, ready for `write.write_atomically` with the other outputs."""
    return {
        folder / name: decode_data_uri(image.data_uri)
        for name, image in sorted(image_files(model).items())
    }


def check_folder(folder: Path, option: str) -> None:
    """An output folder must be a folder, or not exist yet in a folder that does."""
    from reportgen.write import check_folder_writable

    if folder.exists():
        if not folder.is_dir():
            raise ReportError(f"{option} {folder} is a file, not a folder")
        check_folder_writable(folder, f"{option} {folder}")
        return
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"{option}: folder {parent} does not exist")
    check_folder_writable(parent, f"{option} {folder}")  # where it will be created


def prepare_folder(folder: Path, option: str) -> bool:
    """Make `folder` (its parent must exist). Returns True if it was created here."""
    check_folder(folder, option)
    if folder.exists():
        return False
    try:
        folder.mkdir()
    except OSError as exc:
        raise ReportError(f"{option}: cannot create {folder}: {exc.strerror or exc}") from exc
    return True


@contextlib.contextmanager
def created_folders(*folders: tuple[Path | None, str]) -> Iterator[None]:
    """Create output folders; if anything fails inside, remove the ones created here (if empty)."""
    made: list[Path] = []
    try:
        for folder, option in folders:
            if folder is not None and prepare_folder(folder, option):
                made.append(folder)
        yield
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def check_tensorboard() -> None:
    """Fail early, before the forward pass, when --tensorboard cannot work."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ReportError(TENSORBOARD_HINT) from exc


def _picture(image: EncodedImage):  # type: ignore[no-untyped-def]
    """PNG -> (H, W, 3) uint8 RGB, the layout add_image wants with dataformats="HWC"."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(decode_data_uri(image.data_uri))) as opened:
        return np.asarray(opened.convert("RGB"))


def write_tensorboard(model: ReportModel, folder: Path) -> list[Path]:
    """The report's grids as images and its per-channel statistics as histograms, one event file.

    Tags: `filters/<layer>`, `maps/<layer>/<input-index>`, `inputs/<input-index>`,
    `stats/<layer>/mean`, `.../max`, `.../fraction_active`. The event file is written into a
    temporary folder inside DIR and moved into place when complete.
    """
    check_tensorboard()
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    prepare_folder(folder, "--tensorboard")
    staging = Path(tempfile.mkdtemp(prefix=".reportgen-", dir=folder))
    try:
        writer = SummaryWriter(log_dir=str(staging))
        try:
            for section in model.sections:
                if section.filters is not None:
                    writer.add_image(
                        f"filters/{section.name}",
                        _picture(section.filters.image),
                        0,
                        dataformats="HWC",
                    )
                for fm in section.feature_maps:
                    writer.add_image(
                        f"maps/{section.name}/{fm.input_index:03d}",
                        _picture(fm.grid.image),
                        0,
                        dataformats="HWC",
                    )
                stats = section.stats
                for tag, values in (
                    ("mean", stats.mean),
                    ("max", stats.max),
                    ("fraction_active", stats.fraction_active),
                ):
                    finite = np.asarray(values, dtype=np.float64)
                    finite = finite[np.isfinite(finite)]
                    if finite.size:
                        writer.add_histogram(f"stats/{section.name}/{tag}", finite, 0)
            for item in model.inputs:
                if item.thumbnail is not None:
                    writer.add_image(
                        f"inputs/{item.index:03d}", _picture(item.thumbnail), 0, dataformats="HWC"
                    )
        finally:
            writer.close()
        written = []
        for event in sorted(staging.iterdir()):
            target = folder / event.name
            os.replace(event, target)
            written.append(target)
        return written
    except OSError as exc:
        raise ReportError(
            f"--tensorboard: cannot write to {folder}: {exc.strerror or exc}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the `--json` document, shipped as reportgen/data/report.schema.json."""
    import json
    from importlib import resources

    text = (
        resources.files("reportgen.data").joinpath("report.schema.json").read_text(encoding="utf-8")
    )
    return dict(json.loads(text))
