"""Same inputs, same bytes; the date comes from SOURCE_DATE_EPOCH."""

from __future__ import annotations

from pathlib import Path

import pytest

import reportgen
from tests.fixtures.models import tiny_cnn, tiny_inputs


def test_two_runs_give_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")
    second = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")
    first.save(tmp_path / "a.html", json_path=tmp_path / "a.json")
    second.save(tmp_path / "b.html", json_path=tmp_path / "b.json")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "2023-11-14" in (tmp_path / "a.html").read_text(encoding="utf-8")
    assert first.model.run.date == "2023-11-14"


def test_bad_source_date_epoch_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(reportgen.ReportError, match="SOURCE_DATE_EPOCH"):
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu")


def test_saved_report_has_ordinary_file_permissions(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu").save(tmp_path / "r.html")
    finally:
        os.umask(umask)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644
