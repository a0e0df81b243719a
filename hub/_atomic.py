"""Atomic directory writes: stage next to the target, fsync, swap by rename-aside; recovery on load.

Every writer of a directory the hub loads again (bundles, aligned projectors, exports,
checkpoints, starter packs) goes through :func:`atomic_dir`::

    with atomic_dir(out, marker="manifest.json", what="a bundle") as stage:
        ...write every file into ``stage``, the marker (the manifest) last...

1. ``stage`` is ``<target>.tmp-<random>`` beside the target, so every later ``rename(2)``
   stays on one filesystem (nothing is copied across filesystems);
   The writer holds a ``flock`` on its stage while it lives, so a stage nobody holds is known
   to be a killed writer's and is removed by the next save or load;
2. on a clean exit every file and directory of the stage is fsynced and the marker must
   exist (a stage without it is *torn*);
3. the swap, under an exclusive ``flock`` of the parent directory:
   ``target`` → ``<target>.old-<random>`` (rename-aside: ``rename(2)`` cannot replace a
   non-empty directory), ``stage`` → ``target``, fsync of the parent; then the old version
   is removed.  An exception inside the ``with`` block removes the stage and leaves the
   target as it was.

Killed at any moment, the target is either the previous complete version or the new
complete one, or it is absent while a complete ``.old-*`` waits beside it (killed between
the two renames).  Loaders call :func:`recover` first: it restores that ``.old-*``,
removes leftovers of finished swaps, and reports a target that is absent beside a
``.tmp-*`` stage (a first save that never finished) as torn, with a
:class:`~hub.errors.BundleError`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import BundleError, HubError

__all__ = ["atomic_dir", "recover", "atomic_write_bytes", "fsync_tree", "TMP_TAG", "OLD_TAG"]

TMP_TAG = ".tmp-"
OLD_TAG = ".old-"


def _abs(path: str | os.PathLike) -> Path:
    """An absolute path without resolving the last component (a symlinked target is followed by the caller)."""
    return Path(os.path.abspath(os.fspath(path)))


def _siblings(target: Path, tag: str) -> list[Path]:
    pattern = glob.escape(str(target.parent / target.name)) + tag + "*"
    return sorted((Path(p) for p in glob.glob(pattern)), key=lambda p: p.name)


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - e.g. a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file under ``root``, then every directory (deepest first), then ``root``."""
    dirs = []
    for dirpath, _, filenames in os.walk(root):
        dirs.append(Path(dirpath))
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                _fsync_path(p)
    for d in reversed(dirs):
        _fsync_path(d, directory=True)


#: stages this process holds (``(st_dev, st_ino)`` → fd): a writer nested inside its own stage (a bundle's
#: projector) swaps there without locking it again (a second ``flock`` of the same directory would wait forever)
_HELD: dict[tuple[int, int], int] = {}


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the parent directory (serialises swaps and recoveries of its entries)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: renames alone
        yield
        return
    if _key(parent) in _HELD:  # our own stage: no other process swaps inside it
        yield
        return
    fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _hold(stage: Path) -> int | None:
    """Open ``stage`` and take a ``flock`` on it for as long as the writer lives (released when it dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(stage, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    st = os.fstat(fd)
    _HELD[(st.st_dev, st.st_ino)] = fd
    return fd


def _release(fd: int | None) -> None:
    if fd is None:
        return
    st = os.fstat(fd)
    _HELD.pop((st.st_dev, st.st_ino), None)
    os.close(fd)


def _dead(stage: Path) -> bool:
    """True when no live writer holds ``stage`` (its writer was killed, or finished without cleaning up)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: never guess
        return False
    try:
        fd = os.open(stage, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's own lock


def _remove_dead_stages(target: Path) -> None:
    for stage in _siblings(target, TMP_TAG):
        if stage.is_dir() and _dead(stage):
            shutil.rmtree(stage, ignore_errors=True)


def _copy_kept(old: Path, stage: Path, keep: Callable[[str], bool]) -> None:
    """Entries of the previous version that the writer does not own, hard-linked (else copied) into the stage."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in sorted(old.iterdir()):
        if not keep(entry.name) or os.path.lexists(stage / entry.name):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), stage / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=link)
        elif entry.is_file():
            link(str(entry), str(stage / entry.name))


def _check_replaceable(target: Path, marker: str, what: str, allowed: Callable[[str], bool],
                       error: type[HubError]) -> None:
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise error(f"{str(target)!r} exists and is not a directory; refusing to replace it with {what}")
    names = [p.name for p in target.iterdir()]
    if not names or marker in names or all(allowed(n) for n in names):
        return
    raise error(
        f"{str(target)!r} exists and is not {what} (it has no {marker} and holds "
        f"{', '.join(sorted(names)[:5])}{', ...' if len(names) > 5 else ''}); refusing to replace it. "
        "Choose a new or empty directory (nothing was written)"
    )


def _swap(stage: Path, target: Path) -> None:
    old = None
    with _locked(target.parent):
        if os.path.lexists(target):
            old = target.parent / f"{target.name}{OLD_TAG}{secrets.token_hex(4)}"
            os.rename(target, old)
        os.rename(stage, target)
        _fsync_path(target.parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _inside_cwd(target: Path) -> bool:
    try:
        cwd = Path.cwd()
    except OSError:  # pragma: no cover - the working directory was removed
        return False
    return cwd == target or target in cwd.parents


def _swap_entries(stage: Path, target: Path, marker: str) -> None:
    """The working directory (or one above it) cannot be renamed away: swap its entries one by one,
    the marker last (each entry is atomic; the directory as a whole is not)."""
    entries = sorted(stage.iterdir(), key=lambda p: p.name == marker)
    for entry in entries:
        dest = target / entry.name
        if entry.is_dir() and os.path.lexists(dest):
            _swap(entry, dest)
        else:
            os.replace(entry, dest)
    _fsync_path(target, directory=True)
    shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike,
    *,
    marker: str,
    what: str,
    keep: Iterable[str] | Callable[[str], bool] = (),
    allowed: Iterable[str] | Callable[[str], bool] = (),
    error: type[HubError] = BundleError,
) -> Iterator[Path]:
    """Stage a directory beside ``target`` and swap it in atomically (see the module docstring).

    ``marker``: the file the writer writes last (its manifest); a stage without it is torn and is not
    swapped in.  ``keep``: names (or a predicate) of entries of the previous version the writer does not
    own that travel into the new one (hard links; e.g. a training ``checkpoint``).  ``allowed``: names
    (or a predicate) that may fill an existing target that lacks ``marker`` and still be replaced
    (anything else is refused with ``error``: never delete a directory the hub did not write).
    """
    keep_fn = keep if callable(keep) else frozenset(keep).__contains__
    allowed_names = allowed if callable(allowed) else frozenset(allowed).__contains__
    target = _abs(target)
    if target.is_symlink():
        target = target.resolve()
    _check_replaceable(target, marker, what, lambda n: keep_fn(n) or allowed_names(n), error)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_stages(target)  # stages of killed writers: this save supersedes them
    stage = target.parent / f"{target.name}{TMP_TAG}{secrets.token_hex(4)}"
    stage.mkdir()
    held = _hold(stage)  # a live writer's stage is never taken for a dead one's
    try:
        yield stage
        if not (stage / marker).is_file():
            raise error(f"writing {what} to {str(target)!r}: the writer did not write {marker}; nothing was replaced")
        _check_replaceable(target, marker, what, lambda n: keep_fn(n) or allowed_names(n), error)
        if target.is_dir():
            _copy_kept(target, stage, keep_fn)
        fsync_tree(stage)
        if _inside_cwd(target) and target.is_dir():
            _swap_entries(stage, target, marker)
        else:
            _swap(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        _release(held)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically: a temporary file beside it, fsync, ``os.replace``."""
    path = _abs(path)
    tmp = path.parent / f".{path.name}{TMP_TAG}{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def recover(target: str | os.PathLike, *, marker: str, what: str) -> None:
    """Repair what an interrupted swap left beside ``target`` before loading it.

    * ``target`` present: leftover ``.old-*`` versions of finished swaps are removed, and so are
      ``.tmp-*`` stages no live writer holds (each writer keeps a ``flock`` on its stage);
    * ``target`` absent, a complete ``.old-*`` beside it (killed between the two renames):
      the newest is renamed back (the previous complete version; a warning says so);
    * ``target`` absent, only ``.tmp-*`` stages: :class:`BundleError` saying the directory is
      torn (a save was interrupted before anything complete existed);
    * nothing at all: returns, and the loader reports the missing directory as usual.
    """
    target = _abs(target)
    if target.is_symlink():
        target = target.resolve()
    parent = target.parent
    if not parent.is_dir():
        return
    olds = _siblings(target, OLD_TAG)
    if target.is_dir():
        _remove_dead_stages(target)
    if target.is_dir() and not olds:
        return
    if not target.exists() and not olds and not _siblings(target, TMP_TAG):
        return
    with _locked(parent):
        olds = [p for p in _siblings(target, OLD_TAG) if p.is_dir()]
        if target.is_dir():
            for old in olds:
                shutil.rmtree(old, ignore_errors=True)
            return
        if target.exists() or os.path.lexists(target):
            return  # a file or a dangling link: the loader says what it is
        complete = [p for p in olds if (p / marker).is_file()]
        if complete:
            newest = max(complete, key=lambda p: (p / marker).stat().st_mtime_ns)
            try:
                os.rename(newest, target)
            except OSError as exc:  # pragma: no cover - a concurrent writer got there first
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return
            _fsync_path(parent, directory=True)
            warnings.warn(f"{str(target)!r}: a save was interrupted between its two renames; restored the "
                          f"previous complete version from {newest.name}", RuntimeWarning, stacklevel=3)
            return
        stages = _siblings(target, TMP_TAG)
        if stages:
            states = ", ".join(f"{p.name} ({'complete' if (p / marker).is_file() else f'no {marker}'})"
                               for p in stages[:3])
            raise BundleError(
                f"{str(target)!r} is torn: a save of {what} was interrupted before a complete version existed "
                f"(left {states}) and there is no previous version to fall back to. Save it again; "
                "the leftover staging directories can be deleted"
            )
