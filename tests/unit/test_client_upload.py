"""What `autograder submit` uploads: files by name, directories with their layout, never caches or links."""

from __future__ import annotations

import pytest

from server.client import ClientError, upload_entries


def test_a_package_directory_keeps_its_layout_and_drops_caches(tmp_path):
    package = tmp_path / "hw5_inference"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kv_cache.py").write_text("x = 1\n")
    (package / "__pycache__" / "kv_cache.cpython-311.pyc").write_bytes(b"\0")
    (package / ".DS_Store").write_bytes(b"\0")
    (package / "sub").mkdir()
    (package / "sub" / "util.py").write_text("")
    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n")
    names = [name for name, _ in upload_entries([package, notes])]
    assert names == [
        "hw5_inference/__init__.py",
        "hw5_inference/kv_cache.py",
        "hw5_inference/sub/util.py",
        "notes.md",
    ]


def test_links_missing_paths_and_duplicates_are_refused(tmp_path):
    target = tmp_path / "real.py"
    target.write_text("")
    link = tmp_path / "link.py"
    link.symlink_to(target)
    with pytest.raises(ClientError, match="is a link"):
        upload_entries([link])
    with pytest.raises(ClientError, match="not a file or a directory"):
        upload_entries([tmp_path / "missing.py"])
    with pytest.raises(ClientError, match="given twice"):
        upload_entries([target, target])
    inner = tmp_path / "pkg"
    inner.mkdir()
    (inner / "evil.py").symlink_to(target)
    with pytest.raises(ClientError, match="links cannot be submitted"):
        upload_entries([inner])
