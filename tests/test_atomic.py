import pytest

from exporter.atomic import atomic_directory, atomic_file, atomic_write_text


def test_interrupted_file_write_leaves_nothing(tmp_path):
    target = tmp_path / "artifact.onnx"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_file_write_replaces_and_is_readable(tmp_path):
    target = atomic_write_text(tmp_path / "a.json", "{}")
    atomic_write_text(target, "[1]")
    assert target.read_text() == "[1]"
    assert target.stat().st_mode & 0o044  # group/other can read, like any created file
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_interrupted_directory_keeps_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as d:
        (d / "weights").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as d:
            (d / "weights").write_text("new")
            raise KeyboardInterrupt
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_directory(target) as d:
        (d / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
