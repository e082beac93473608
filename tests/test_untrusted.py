"""Untrusted files: pickles never run without --trust-pickle (a payload that would create a
marker file is proven not to run), zip bombs and huge images are refused before they take
memory, and the report shows paths relative to where reportgen ran."""

from __future__ import annotations

import builtins
import json
import resource
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reportgen import cli
from reportgen.errors import ReportError
from reportgen.inputs import read_tensor_file
from reportgen.untrusted import check_archive

MODEL_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
"""


class Payload:
    """Unpickling this calls open(marker, 'w'): the file appearing proves the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (builtins.open, (self.marker, "w"))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main([*args, "-q", "--device", "cpu"])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert err.startswith("reportgen: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "net.py").write_text(MODEL_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- pickles -------------------------------------------------------------------------------


def evil_files(folder: Path) -> dict[str, Path]:
    marker = folder / "PWNED"
    files = {
        "model.pt": {"state_dict": Payload(marker)},
        "weights.pth": {"state_dict": {"0.weight": torch.zeros(4, 3, 3, 3)}, "extra": Payload(marker)},
        "inputs.pt": {"inputs": torch.zeros(2, 3, 8, 8), "hook": Payload(marker)},
    }
    paths = {}
    for name, obj in files.items():
        torch.save(obj, folder / name)
        paths[name] = folder / name
    torch.save(Payload(marker), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    paths["legacy.pt"] = folder / "legacy.pt"
    objects = np.empty(2, dtype=object)
    objects[0] = Payload(marker)
    np.save(folder / "inputs.npy", objects, allow_pickle=True)
    paths["inputs.npy"] = folder / "inputs.npy"
    assert not marker.exists()
    return paths


def test_the_payload_is_live_when_unpickled_without_protection(folder: Path) -> None:
    """Control: torch.load(weights_only=False) on the same file does run the payload."""
    paths = evil_files(folder)
    handle = torch.load(paths["model.pt"], weights_only=False)["state_dict"]
    handle.close()
    assert (folder / "PWNED").exists()


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("model.pt", r"contains pickled Python objects.*refused"),
        ("legacy.pt", r"contains pickled Python objects.*refused"),
        ("weights.pth", r"contains pickled Python objects.*refused"),
        ("inputs.pt", r"holds pickled Python objects, not a tensor"),
        ("inputs.npy", r"holds Python objects, not numbers"),
    ],
)
def test_pickles_are_refused_and_never_run(
    folder: Path, capsys: pytest.CaptureFixture[str], where: str, expected: str
) -> None:
    import re

    paths = evil_files(folder)
    if where in ("model.pt", "legacy.pt"):
        args = [str(paths[where]), "--input-shape", "3,8,8"]
    elif where == "weights.pth":
        args = ["net.py:build", "--weights", str(paths[where]), "--input-shape", "3,8,8"]
    else:  # input tensor files, read by the loader the CLI and the API share
        with pytest.raises(ReportError, match=expected):
            read_tensor_file(paths[where])
        assert not (folder / "PWNED").exists()
        return
    code, err = run_cli([*args, "-o", "out.html"], capsys)
    assert code == 2, err
    assert re.search(expected, one_error_line(err)), err
    assert not (folder / "PWNED").exists()
    assert not (folder / "out.html").exists()


def test_trust_pickle_is_what_lets_a_pickle_run(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = evil_files(folder)
    code, err = run_cli([str(paths["model.pt"]), "--trust-pickle", "--input-shape", "3,8,8"], capsys)
    assert (folder / "PWNED").exists()  # the flag is the only gate, and it is documented as such
    assert code == 2 and "holds weights, not a model" in err


def test_a_trusted_pickled_model_works(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.save(model, folder / "whole.pt")
    code, err = run_cli(["whole.pt", "--input-shape", "3,8,8", "-o", "out.html"], capsys)
    assert code == 2 and "--trust-pickle" in one_error_line(err)
    code, err = run_cli(["whole.pt", "--trust-pickle", "--input-shape", "3,8,8", "-o", "out.html"], capsys)
    assert code == 0, err
    assert (folder / "out.html").stat().st_size > 1000


# --- zip bombs -------------------------------------------------------------------------------


def deflated_zeros(prefix: bytes, zeros: int, block: int = 1 << 20) -> tuple[bytes, int]:
    """A raw deflate stream of `prefix` + `zeros` zero bytes, and its CRC-32, made in O(1) time:
    after a full flush every block of zeros compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = bytes(block)
    one = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH) == one
    count, rest = divmod(zeros, block)
    assert rest == 0
    stream = head + one * count + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    return stream, crc


def write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A plain (non-zip64) archive; entries are (name, stored bytes, method, crc, unpacked size)."""
    body = bytearray()
    directory = bytearray()
    for name, data, method, crc, size in entries:
        encoded = name.encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                            len(encoded), 0) + encoded + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                                 size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return (name, data, 0, zlib.crc32(data), len(data))


BOMB_BYTES = 2 * 2**30  # what each bomb inflates to


def pt_bomb(path: Path) -> None:
    """A torch checkpoint whose one float tensor (2 GiB of zeros) is a 2 MB deflated entry."""
    import io
    import pickle
    from collections import OrderedDict

    numel = BOMB_BYTES // 4

    class Storage:
        pass

    storage = Storage()

    class Tensor:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"inputs": Tensor()})
    data, crc = deflated_zeros(b"", BOMB_BYTES)
    write_zip(path, [stored("archive/data.pkl", buffer.getvalue()), stored("archive/byteorder", b"little"),
                     ("archive/data/0", data, 8, crc, BOMB_BYTES), stored("archive/version", b"3\n")])


def npz_bomb(path: Path) -> None:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, dtype=np.float32))
    header["shape"] = (BOMB_BYTES // 4,)
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    data, crc = deflated_zeros(buffer.getvalue(), BOMB_BYTES)
    write_zip(path, [("inputs.npy", data, 8, crc, len(buffer.getvalue()) + BOMB_BYTES)])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    paths = {"bomb.pt": folder / "bomb.pt", "bomb.npz": folder / "bomb.npz"}
    pt_bomb(paths["bomb.pt"])
    npz_bomb(paths["bomb.npz"])
    return paths


def test_the_bombs_are_real(bombs: dict[str, Path]) -> None:
    """Control: each is a valid archive, 2 MB on disk, that really inflates to 2 GiB."""
    import zipfile

    for path in bombs.values():
        assert path.stat().st_size < 4 * 2**20
        with zipfile.ZipFile(path) as archive:
            entry = max(archive.infolist(), key=lambda e: e.file_size)
            assert entry.file_size >= BOMB_BYTES
            with archive.open(entry) as stream:
                stream.read(1 << 20)  # inflates fine (reading it all would take the 2 GiB)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("role", ["model", "weights", "input-pt", "input-npz"])
def test_zip_bombs_are_refused_before_they_inflate(
    bombs: dict[str, Path], folder: Path, capsys: pytest.CaptureFixture[str], role: str
) -> None:
    before = max_rss_mb()
    if role == "model":
        args = [str(bombs["bomb.pt"]), "--input-shape", "3,8,8"]
    elif role == "weights":
        args = ["net.py:build", "--weights", str(bombs["bomb.pt"]), "--input-shape", "3,8,8"]
    else:  # input tensor files, read by the loader the CLI and the API share
        with pytest.raises(ReportError, match=r"looks like a zip bomb.* to 2\.1 GB; refused"):
            read_tensor_file(bombs["bomb.pt" if role == "input-pt" else "bomb.npz"])
        assert max_rss_mb() - before < 500
        return
    code, err = run_cli([*args, "-o", "out.html"], capsys)
    assert code == 2
    assert "looks like a zip bomb" in one_error_line(err) and "2.1 GB" in err
    assert max_rss_mb() - before < 500  # nothing near 2 GiB was allocated
    assert not (folder / "out.html").exists()


def test_archives_larger_than_memory_are_refused_and_real_checkpoints_pass(tmp_path: Path) -> None:
    path = tmp_path / "real.pt"
    torch.save({"w": torch.zeros(64, 64), "b": torch.ones(64)}, path)
    check_archive(path)  # torch stores entries uncompressed: never a bomb
    with pytest.raises(ReportError, match=r"would unpack to 16.\d kB, more than this machine's memory \(1.0 kB\)"):
        check_archive(path, limit=1000)
    (tmp_path / "plain.bin").write_bytes(b"not a zip at all")
    check_archive(tmp_path / "plain.bin")


# --- huge images -------------------------------------------------------------------------------


def png_of_zeros(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of the given size; all black, a few kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_decompression_bomb_images_are_refused(folder: Path, capsys: pytest.CaptureFixture[str], side: int) -> None:
    """30000x30000 is past PIL's hard limit; 10000x10000 only drew a warning and was decoded
    (100 megapixels: a 1.2 GB float tensor) before the warning became an error."""
    from PIL import Image

    image = folder / "huge.png"
    png_of_zeros(image, side, side)
    assert image.stat().st_size < 2 * 2**20
    assert struct.unpack(">II", image.read_bytes()[16:24]) == (side, side)
    if side == 10_000:  # control: PIL by itself only warns, and would decode it
        with pytest.warns(Image.DecompressionBombWarning), Image.open(image) as opened:
            assert opened.size == (side, side)
    before = max_rss_mb()
    code, err = run_cli(["net.py:build", "huge.png", "-o", "out.html"], capsys)
    assert code == 2
    assert one_error_line(err).startswith("reportgen: error: image too large to open safely: huge.png")
    assert max_rss_mb() - before < 300
    assert not (folder / "out.html").exists()


# --- paths in the report ----------------------------------------------------------------------


def test_paths_in_the_report_are_relative_to_where_reportgen_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    private = tmp_path / "home" / "alice" / "secret-project"
    private.mkdir(parents=True)
    (private / "net.py").write_text(MODEL_FILE)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.save(model.state_dict(), private / "ckpt.pt")
    Image.new("RGB", (8, 8), (10, 200, 30)).save(private / "cat.png")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "alice"))
    code, err = run_cli([f"{private}/net.py:build", "--weights", str(private / "ckpt.pt"), str(private / "cat.png"),
                         "--labels", str(_labels(private)), "-o", "r.html", "--json", "r.json"], capsys)
    assert code == 0, err
    data = json.loads((elsewhere / "r.json").read_text(encoding="utf-8"))
    # The Reproduce command must run as printed: it names the folder it ran in and the paths as
    # typed, the home folder as ~ (which the shell expands and a reader does not learn).
    command = data["run"]["command"]
    assert command.startswith(f"cd {elsewhere} && ") and " ~/secret-project/cat.png " in command
    for name in ("r.html", "r.json"):
        text = (elsewhere / name).read_text(encoding="utf-8")
        assert "alice" not in text, name
        assert str(tmp_path) not in _without(text, command), name
    assert data["model"]["file"] == "ckpt.pt"
    # Inside the folder reportgen runs in, paths keep their folders, relative.
    monkeypatch.chdir(tmp_path)
    code, err = run_cli([f"{private}/net.py:build", "--weights", str(private / "ckpt.pt"), str(private / "cat.png"),
                         "-o", "r.html", "--json", "r.json"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["model"]["file"] == "home/alice/secret-project/ckpt.pt"
    assert str(tmp_path) not in _without((tmp_path / "r.html").read_text(encoding="utf-8"), data["run"]["command"])


def _without(text: str, command: str) -> str:
    """`text` with the command removed, as the page (HTML-escaped) and the JSON write it."""
    from markupsafe import escape

    return text.replace(str(escape(command)), "").replace(json.dumps(command)[1:-1], "")


def _labels(folder: Path) -> Path:
    path = folder / "labels.txt"
    path.write_text("cat\ndog\nbird\n")
    return path
