"""Publishing outputs safely: data reaches the disk before the rename that publishes it (fsync of the file, the
rename, fsync of the directory, in that order), and the temporaries a kill -9 leaves are removed by the next write of
the same target while every other file stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rankaudit import io


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (by the path its descriptor names) and every os.replace, in order; both still happen."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", str(source), str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
def test_a_file_is_fsynced_before_its_rename_and_its_directory_after(tmp_path, disk_events):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    assert len(disk_events) == 3
    (kind_1, synced), (kind_2, source, destination), (kind_3, directory) = disk_events
    assert (kind_1, kind_2, kind_3) == ("fsync", "replace", "fsync")
    assert synced == source and Path(source).parent == tmp_path and Path(source).name.startswith(".out.json.")
    assert destination == str(target) and directory == str(tmp_path)
    assert target.read_text() == '{\n  "a": 1\n}\n'


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
def test_every_file_of_a_directory_is_fsynced_before_the_swap(tmp_path, disk_events):
    target = tmp_path / "model"
    with io.atomic_directory(target) as tmp:
        (tmp / "weights.safetensors").write_bytes(b"w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "tokenizer.json").write_text("{}")
    swap = next(i for i, event in enumerate(disk_events) if event[0] == "replace")
    before = {event[1] for event in disk_events[:swap]}
    temporary = disk_events[swap][1]
    assert before == {f"{temporary}/weights.safetensors", f"{temporary}/sub/tokenizer.json", f"{temporary}/sub", temporary}
    assert disk_events[swap][2] == str(target) and disk_events[swap + 1:] == [("fsync", str(tmp_path))]
    assert (target / "sub" / "tokenizer.json").read_text() == "{}"


def _plant(directory: Path, names: list[str]) -> None:
    for name in names:
        if name.endswith("/"):
            (directory / name).mkdir()
            (directory / name / "weights").write_text("half")
        else:
            (directory / name).write_text("half")


UNRELATED = [".other.json.ab12cd34.json", ".out.json.lock", ".out.json.parts/", ".out.json.ab12cd345.json",
             ".rankaudit_parts/", "out.json.ab12cd34.json", ".hidden"]


def test_the_next_write_removes_the_orphans_of_its_target_only(tmp_path):
    orphans = [".out.json.ab12cd34.json", ".out.json.k3_x9z0q.json", ".out.json.0a1b2c3d/"]
    _plant(tmp_path, orphans + UNRELATED)
    assert [p.name for p in io.orphaned_temporaries(tmp_path / "out.json")] == sorted(name.rstrip("/") for name in orphans)
    io.write_json(tmp_path / "out.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", *(name.rstrip("/") for name in UNRELATED)])


def test_a_directory_write_removes_its_orphaned_temporaries(tmp_path):
    _plant(tmp_path, [".model.1a2b3c4d/", ".model.zzzzzzzz/", ".models.1a2b3c4d/"])
    with io.atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".models.1a2b3c4d", "model"]


KILLED_WRITER = """
import os, signal, sys
from rankaudit import io
with io.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_write_leaves_an_orphan_that_the_next_write_removes(tmp_path):
    target = tmp_path / "layer_3.safetensors"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, timeout=120)
    assert killed.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".layer_3.safetensors.") and not target.exists()
    io.write_json(target, {"ok": True})
    assert [p.name for p in tmp_path.iterdir()] == ["layer_3.safetensors"]
