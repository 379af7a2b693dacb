"""A file reader confined to one directory.

Confinement is enforced while opening, not by comparing strings: the path is split into
its parts and opened one directory at a time from the root's own file descriptor, each
part with O_NOFOLLOW, so neither "..", nor an absolute path, nor a symbolic link (placed
before or during the call) can lead outside the root:

    read_file("notes/a.txt")  →  fd(root) ─openat "notes" (O_DIRECTORY|O_NOFOLLOW)─►
                                 fd(notes) ─openat "a.txt" (O_NOFOLLOW)─► read ≤ max_chars

Symbolic links are refused even when they point inside the root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from lmforge.errors import ConfigError
from lmforge.tools.registry import Tool, ToolError

NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _parts(path: str) -> list[str]:
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute():
        raise ToolError(f"{path!r} is absolute; give a path inside the directory")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise ToolError("give the path of a file")
    if ".." in parts:
        raise ToolError(f"{path!r} leaves the directory ('..' is not allowed)")
    return parts


def open_confined(root: Path, path: str) -> int:
    """A read-only descriptor of `path` beneath `root`; ToolError when it is not one."""
    parts = _parts(path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = (
                os.O_RDONLY | NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            )  # a FIFO must not block
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise ToolError(f"{path!r} does not exist") from None
            except OSError as e:  # ELOOP (last part) or ENOTDIR: a symbolic link, or a file
                what = "/".join(parts[: i + 1])
                if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise ToolError(
                        f"{what!r} is a symbolic link; links are not followed"
                    ) from None
                raise ToolError(f"{what!r} cannot be opened ({e.strerror})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def file_reader(root: str | Path, max_chars: int = 20000, name: str = "read_file") -> Tool:
    """A tool that reads UTF-8 text files beneath `root` (nothing else is reachable)."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise ConfigError(
            f"the file tool's directory {root} does not exist; create it or fix the path"
        )

    def read_file(path: str) -> str:
        """Read a text file from the working directory.

        Args:
            path: the file's path relative to the directory, e.g. "notes/todo.txt"
        """
        fd = open_confined(base, path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ToolError(f"{path!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            data = f.read(4 * max_chars + 4)
        text = data.decode("utf-8", "replace")
        return text if len(text) <= max_chars else text[:max_chars] + "\n[truncated]"

    return Tool.from_function(read_file, name)
