"""Atomic file writes: a reader sees the old file or the complete new one, never half of one. And a lock for work
that several processes would otherwise do twice."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change process-wide state, if only briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), fsync it, then rename it over `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # the usual permissions, whatever the writer did (safetensors makes 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextlib.contextmanager
def exclusive(lock_path: str | Path | None, on_wait: Callable[[], None] = lambda: None):
    """Hold an exclusive lock on `lock_path` (an empty file, created if missing and left behind) while the block
    runs: another process, or another thread that opens it too, waits at the same lock; on_wait() is called first
    when it has to. The operating system lets go of it when its holder exits, even killed. None, no fcntl (not
    POSIX) or a file system that refuses locks: the block runs unlocked."""
    fd = None
    if lock_path is not None:
        try:
            import fcntl
            Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:  # another user's lock file in a shared cache: flock needs no write access
                fd = os.open(lock_path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # unlocked: the work may be done twice, never wrongly (writes are atomic)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # lets go of the lock


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """One JSON line appended (and flushed) to a log; a reader skips a last line a crash cut short."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash ends the log
    return rows
