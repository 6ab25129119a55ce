"""Files a run writes: whole or not at all, into folders checked before the work, one writer per run dir."""

import fcntl
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from mindiff.errors import UserError, one_line

log = logging.getLogger(__name__)


class UnwritablePath(UserError):
    """A path that cannot be written; the message names it and the setting that chose it."""


class WriteFailed(UnwritablePath, OSError):
    """A write that failed half-way (a full disk, a file-size limit, a lost mount): the file there is the one
    from before. Still an OSError, for the callers that add their own advice."""


def atomic_write(path: Path, write: Callable[[object], None]) -> Path:
    """`write(f)` into a temp file beside `path`, fsync it, then rename it into place: a reader (or a kill
    or power loss at any moment) sees the old file or the new one, never a torn one. Each process has its
    own temp file, so parallel sweep jobs writing one cache file do not clash. Every file mindiff writes
    goes through here, so every failed write says the same one line (WriteFailed)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    existed = path.is_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UserError):
            raise _write_failed(path, e, existed) from None
        raise
    return path


def _write_failed(path: Path, e: OSError, existed: bool) -> WriteFailed:
    """The one message of a failed write. `reason` and `errno` are kept for callers that word their own (not as
    strerror: OSError's str() would then print it instead of the message)."""
    reason = e.strerror or one_line(e)
    previous = f"the previous {path.name} is intact" if existed else "nothing was written there"
    error = WriteFailed(f"could not write {path} ({reason}); {previous}: free some space, or choose a writable "
                        f"place, and run it again")
    error.errno, error.path, error.reason = e.errno, path, reason
    return error


def save_text(text: str, path: Path) -> Path:
    return atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_cache(obj, path: Path) -> None:
    """A cache file (tensors and plain values only) that parallel sweep jobs may write at once."""
    atomic_write(path, lambda f: torch.save(obj, f))


@dataclass(frozen=True)
class TensorSpec:
    """What a cached tensor must be: its shape and dtype (its values are not trusted either way)."""
    shape: Tuple[int, ...]
    dtype: torch.dtype

    @staticmethod
    def of(tensors: Dict[str, torch.Tensor]) -> Dict[str, "TensorSpec"]:
        """The specs of a state dict's tensors."""
        return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in tensors.items()}


def _check_layout(value, spec, where: str = "") -> None:
    """`value` is what `spec` says: a dict with exactly its keys (each checked in turn; at the top level more
    keys may come along, unread), a tensor of a TensorSpec's shape and dtype, an instance of a type, or equal
    to any other value (tensors: torch.equal)."""
    if isinstance(spec, dict):
        keys = set(value) if isinstance(value, dict) else set()
        if not isinstance(value, dict) or not keys >= set(spec) or (where and keys != set(spec)):
            found = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"{where or 'it'} holds {found}, not {sorted(spec)}")
        for key, inner in spec.items():
            _check_layout(value[key], inner, f"{where}[{key!r}]" if where else str(key))
    elif isinstance(spec, TensorSpec) or isinstance(spec, torch.Tensor):
        if not isinstance(value, torch.Tensor) or (tuple(value.shape), value.dtype) != (tuple(spec.shape), spec.dtype):
            found = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{where} is {found}, not {tuple(spec.shape)} {spec.dtype}")
        if isinstance(spec, torch.Tensor) and not torch.equal(value, spec):
            raise ValueError(f"{where} holds other values than this data's")
    elif isinstance(spec, type):
        if not isinstance(value, spec):
            raise ValueError(f"{where} is a {type(value).__name__}, not a {spec.__name__}")
    elif isinstance(value, torch.Tensor) or value != spec:
        raise ValueError(f"{where} is {str(value)[:60]!r}, not {str(spec)[:60]!r}")


def load_cache(path: Path, spec: dict, what: str, redo: str = "making it again") -> Optional[dict]:
    """A file save_cache wrote, read as data (weights_only) and checked against `spec` (see _check_layout)
    before anything uses it; None when there is none, or (one warning line naming it) when it is torn,
    foreign or made for other data: the caller makes it again and save_cache replaces it."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        _check_layout(saved, spec)
        return saved
    except Exception as e:  # a torn or foreign file is made again, never trusted
        log.warning("%s %s is unreadable or not this data's (%s); %s", what, path, one_line(e)[:200], redo)
        return None


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
