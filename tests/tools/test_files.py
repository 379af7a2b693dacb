"""The confined file reader."""

from __future__ import annotations

import os

import pytest

from lmforge.errors import ConfigError
from lmforge.tools import Toolbox, ToolCall, file_reader


@pytest.fixture
def box(tmp_path):
    root = tmp_path / "root"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "a.txt").write_text("你好, notes")
    (root / "long.txt").write_text("x" * 50)
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(root / "notes", root / "inside")  # points inside, refused all the same
    os.mkfifo(root / "pipe")
    return Toolbox([file_reader(root, max_chars=20)])


def read(box, path):
    result = box.call(ToolCall("read_file", {"path": path}))
    return result.content, result.error


def test_reads_files_beneath_the_root(box):
    assert read(box, "notes/a.txt") == ("你好, notes", False)
    assert read(box, "./notes//a.txt") == ("你好, notes", False)
    assert read(box, "long.txt") == ("x" * 20 + "\n[truncated]", False)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "'/etc/passwd' is absolute"),
        ("../secret.txt", "leaves the directory"),
        ("notes/../../secret.txt", "leaves the directory"),
        ("link.txt", "'link.txt' is a symbolic link; links are not followed"),
        ("inside/a.txt", "'inside' is a symbolic link"),
        ("notes/a.txt/x", "'notes/a.txt' cannot be opened (Not a directory)"),
        ("missing.txt", "'missing.txt' does not exist"),
        ("notes", "'notes' is not a regular file"),
        ("pipe", "'pipe' is not a regular file"),
        ("", "give the path of a file"),
    ],
)
def test_everything_else_is_refused(box, path, message):
    content, error = read(box, path)
    assert error and message in content and "secret" not in content.replace("secret.txt", "")


def test_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; create it"):
        file_reader(tmp_path / "nope")
