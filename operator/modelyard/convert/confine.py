"""Confinement: nothing outside the source is read, nothing outside the work directory is written.

One helper for every name that comes from a user or a model file (a pvc:// path, an S3 object key under a prefix,
an ONNX external-data location, a samples path) and for every directory the converter reads (a SavedModel, a
directory on a claim): a name is a relative path without `..`, backslashes, NUL or a drive; a path resolves inside
its root; a symlink that leaves its root, or that points at a directory (how a link loop expands without end), is
refused by name, never followed. Sizes are counted on the way, so a tree over the conversion's limit is refused
before anything reads it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelyard.convert.errors import SourceRefused

MAX_FILES = 100_000
"""A source directory holds at most this many entries (a SavedModel has a handful)."""


def relative_name(name: str, what: str) -> PurePosixPath:
    """`name` as a relative path that stays where it is joined; SourceRefused for one that could climb out."""
    pure = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or pure.is_absolute() or ".." in pure.parts
            or (len(name) > 1 and name[1] == ":")):
        raise SourceRefused(f"{what} {name!r} is not a relative path inside the source (absolute, '..', a backslash, "
                            "a drive or a NUL): it is not read, and nothing is written there")
    return pure


def inside(root: Path, path: Path, what: str) -> Path:
    """`path` if it resolves inside `root` (through any symlinks); SourceRefused otherwise."""
    try:
        resolved = path.resolve(strict=False)
        ok = resolved.is_relative_to(root.resolve(strict=False))
    except (OSError, RuntimeError):  # a symlink loop
        ok = False
    if not ok:
        raise SourceRefused(f"{what} resolves outside the source (a symlink, or a path that climbs out): it is "
                            "not read")
    return path


def join_inside(root: Path, name: str, what: str) -> Path:
    """`root / name`, with `name` checked as a relative name and the result resolving inside `root`."""
    return inside(root, root / relative_name(name, what), f"{what} {name!r}")


@dataclass(frozen=True)
class Tree:
    files: int
    bytes: int


def check_tree(root: Path, what: str, max_bytes: int | None = None) -> Tree:
    """Walk a source (a file or a directory) without following links: every symlink must name a file inside the
    source; the total size must stay within `max_bytes`. SourceRefused names the first link or the size."""
    base = root if root.is_dir() and not root.is_symlink() else root.parent
    files = total = 0
    for path in _walk(root):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            rel = path.relative_to(base) if path != root else PurePosixPath(path.name)
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                raise SourceRefused(f"{what}: the symlink {str(rel)!r} loops or points nowhere: it is not followed") \
                    from None
            if not target.is_relative_to(base.resolve()):
                raise SourceRefused(f"{what}: the symlink {str(rel)!r} points outside the source: it is not followed "
                                    "(a link to another file, /proc or a credential would be copied with the model)")
            if target.is_dir():
                raise SourceRefused(f"{what}: the symlink {str(rel)!r} points at a directory: it is not followed (a "
                                    "link to a directory can expand without end); copy the files instead")
            mode = target.stat().st_mode
        if stat.S_ISREG(mode):
            files += 1
            total += path.stat().st_size
        elif not stat.S_ISDIR(mode):
            raise SourceRefused(f"{what}: {path.name!r} is not a regular file (a device, socket or FIFO): not read")
        if files > MAX_FILES:
            raise SourceRefused(f"{what} holds more than {MAX_FILES} files: not a model")
        if max_bytes is not None and total > max_bytes:
            raise SourceRefused(f"{what} is larger than conversion.maxSourceSize ({size_text(max_bytes)}): more than "
                                f"{size_text(total)} found; raise the limit if the model really is that large")
    return Tree(files, total)


def _walk(root: Path) -> list[Path]:
    if not root.is_dir() or root.is_symlink():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        out.extend(d / n for n in sorted(dirnames) if (d / n).is_symlink())
        out.extend(d / n for n in sorted(filenames))
    return out


def size_text(n: int) -> str:
    """A byte count as people read it."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"

