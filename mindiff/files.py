"""Files a run writes: whole or not at all, into folders checked before the work, one writer per run dir."""

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict

import torch

from mindiff.errors import UserError


class UnwritablePath(UserError):
    """A path that cannot be written; the message names it and the setting that chose it."""


def atomic_write(path: Path, write: Callable[[object], None]) -> Path:
    """`write(f)` into a temp file beside `path`, fsync it, then rename it into place: a reader (or a kill
    or power loss at any moment) sees the old file or the new one, never a torn one. Each process has its
    own temp file, so parallel sweep jobs writing one cache file do not clash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_text(text: str, path: Path) -> Path:
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_cache(obj, path: Path) -> None:
    """A cache file (tensors and plain values only) that parallel sweep jobs may write at once."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _probe(folder: Path, label: str, create: bool) -> None:
    """Prove a file can be made in `folder` (created if need be; with create=False, in the nearest folder
    that exists, which is left as it was). A real write, not os.access: root passes every permission check."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, f"{probe} is not a folder")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UnwritablePath(f"{label}: cannot write in {folder} ({e.strerror or e}); choose a writable "
                             f"folder") from None


def check_writable_dir(folder, setting: str, create: bool = True) -> Path:
    """`folder` can be written (or raise naming it and the `setting` that chose it)."""
    folder = Path(folder).expanduser()
    _probe(folder, f"{setting}={folder}", create)
    return folder


def check_writable_file(path, setting: str) -> Path:
    """A file that is about to be written after minutes of work: check its folder now."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UnwritablePath(f"{setting}={path} is a folder; give a file name")
    _probe(path.parent, f"{setting}={path}", create=True)
    return path


class RunDirBusy(UserError):
    """Another training holds the run dir."""


_HELD: Dict[Path, int] = {}  # run dirs this process holds, with the open lock file


def _busy(run_dir: Path, fd: int) -> RunDirBusy:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return RunDirBusy(f"{run_dir} is in use by a training that is still running (pid {holder}); wait for it, "
                      f"stop it, or choose another hydra.run.dir")


def lock_run_dir(run_dir: Path) -> None:
    """Hold the run dir for this process until it exits: a second training there (which would mix its
    checkpoints with ours) is refused. An flock dies with its process, so a killed run leaves no stale lock;
    the temp files its killed writes left (see atomic_write) are removed once the dir is ours."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _busy(key, fd)
        os.close(fd)
        raise error from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = fd
    for stale in (key / "checkpoints").glob("*.tmp"):
        stale.unlink()


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse now, before Hydra writes into it, a run dir that another training holds."""
    lock = Path(run_dir).resolve() / ".lock"
    if lock.parent in _HELD or not lock.is_file():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(lock.parent, fd) from None
    finally:
        os.close(fd)
