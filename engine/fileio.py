"""Atomic file writes, one implementation for the library, the CLI, training and the benchmarks.

A file is written to a temporary sibling and moved over the target with ``os.replace``, so a reader never sees a
half-written file and an interrupted write leaves the old file (or none) behind, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[Any]], None], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically.

    Args:
        path: the target; its folder is created if needed.
        data: text (written as UTF-8), bytes, or a function that writes to the open file (binary mode).
        fsync: flush the file to disk before the rename.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            if isinstance(data, str):
                fh.write(data.encode("utf-8"))
            elif isinstance(data, bytes | bytearray):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> Path:
    """Write a text file atomically through a function that writes to the open text stream (UTF-8, ``\\n``)."""

    def binary(fh: IO[bytes]) -> None:
        import io

        text = io.TextIOWrapper(fh, encoding="utf-8", newline="", write_through=True)
        write(text)
        text.flush()
        text.detach()  # leave the binary file open for atomic_write to flush and close

    return atomic_write(path, binary)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that it is never changed, even briefly)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and the folders under it mode ``0o777 & ~umask``, its files ``0o666 & ~umask``: a folder made
    with ``tempfile.mkdtemp`` (0o700) then gets the modes of any other output."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(0o666 & ~mask)
        for name in dirnames:
            Path(dirpath, name).chmod(0o777 & ~mask)
    Path(root).chmod(0o777 & ~mask)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the complete folder ``tmp`` to ``out`` (a sibling), replacing an existing ``out``: the old one is renamed
    aside first and removed only after the new one is in place, so ``out`` is never half-written."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
