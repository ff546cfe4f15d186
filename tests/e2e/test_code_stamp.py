"""A kept demo run (RANKAUDIT_E2E_WORKDIR) is reused only by the code that produced it."""

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("e2e_conftest", Path(__file__).with_name("conftest.py"))
e2e = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(e2e)


def test_a_run_of_this_code_is_reused_and_an_empty_folder_is_run(tmp_path: Path) -> None:
    assert not e2e.kept_run_is_current(tmp_path / "absent")
    assert not e2e.kept_run_is_current(tmp_path)
    (tmp_path / e2e.CODE_STAMP).write_text(json.dumps(e2e.code_version()))
    assert e2e.kept_run_is_current(tmp_path)


def test_a_run_of_other_code_is_refused(tmp_path: Path) -> None:
    stamp = e2e.code_version()
    stamp["code_sha256"] = "0" * 64
    (tmp_path / e2e.CODE_STAMP).write_text(json.dumps(stamp))
    with pytest.raises(pytest.fail.Exception, match="other code"):
        e2e.kept_run_is_current(tmp_path)


def test_a_folder_without_a_stamp_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with pytest.raises(pytest.fail.Exception, match="no code_version.json"):
        e2e.kept_run_is_current(tmp_path)


def test_the_code_version_follows_the_package_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = e2e.code_version()
    fake_repo = tmp_path / "repo"
    (fake_repo / "src" / "rankaudit").mkdir(parents=True)
    (fake_repo / "config").mkdir()
    (fake_repo / "config" / "config.yaml").write_bytes((e2e.REPO / "config" / "config.yaml").read_bytes())
    (fake_repo / "src" / "rankaudit" / "spectra.py").write_text("RANK = 1\n")
    monkeypatch.setattr(e2e, "REPO", fake_repo)
    first = e2e.code_version()["code_sha256"]
    (fake_repo / "src" / "rankaudit" / "spectra.py").write_text("RANK = 2\n")
    assert e2e.code_version()["code_sha256"] != first
    assert first != before["code_sha256"]
