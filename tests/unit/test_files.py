"""The one atomic write: content appears whole or not at all, with the user's mode."""

from __future__ import annotations

import os
import stat

import pytest

from instantstyle.files import atomic_write, atomic_write_bytes, atomic_write_text, current_umask


def test_writes_with_user_mode_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_error_leaves_old_file_and_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_exclusive_never_replaces(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.bin", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and len(list(tmp_path.iterdir())) == 1
    atomic_write_bytes(path, b"second")  # not exclusive: replaced
    assert path.read_bytes() == b"second"


def test_exclusive_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = atomic_write_bytes(tmp_path / "a.bin", b"first", exclusive=True)
    assert path.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and len(list(tmp_path.iterdir())) == 1
