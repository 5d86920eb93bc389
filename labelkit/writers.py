"""Write results without holding them in memory, and never leave a half-written final file.

Labelers append finished records to JSONL shard files as they go; the final COCO JSON is then
streamed from the shards into a temporary file that atomically replaces the destination.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def dumps(record) -> str:
    """Compact, deterministic JSON (same input -> same bytes)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _host() -> str:
    """This host and PID namespace: only there does a process id name a process (containers share host names)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname().replace('.', '_')}-{namespace}"


def _writer_tag() -> str:
    """Host, PID namespace and process of this writer, as written into its temporary file's name."""
    return f"{_host()}-{os.getpid()}"


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of `path` that killed writers on this host left behind (their process is gone)."""
    host = _host()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tag = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        tmp_host, _, pid = tag.rpartition("-")
        if tmp_host == host and re.fullmatch("[0-9]{1,9}", pid) and not _is_running(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A writer killed outright (SIGKILL, power loss) leaves its temporary behind; the next write of the same
    path on the same host removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should get the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


MIN_FREE_BYTES = 64 * 2**20


def check_writable(directory: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail early, with a clear message, when results could not be written (unwritable or full disk).

    A probe file is written and synced (creating an empty file can still succeed on a full disk), and
    the disk must have `min_free_bytes` left, so that a run does not label for hours and then fail
    to save.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(directory).free
    except OSError as e:
        raise OSError(f"results directory {directory} is not writable: {e.strerror or e}") from None
    if free < min_free_bytes:
        raise OSError(
            f"results directory {directory}: its disk is (nearly) full: {free / 2**20:.1f} MiB free, "
            f"at least {min_free_bytes / 2**20:.0f} MiB needed"
        )


def _write_array(f, items: Iterable) -> int:
    count = 0
    f.write("[")
    for item in items:
        f.write(("," if count else "") + "\n" + dumps(item))
        count += 1
    f.write("\n]")
    return count


def write_coco(path: str | Path, header: dict, annotations: Iterable[dict]) -> int:
    """Stream a COCO file: `header`'s keys in order, then `annotations` one by one. Returns their count.

    A header value that is an iterator (not a list or dict) is streamed as a JSON array too, so that
    e.g. a million `images` need not be held in memory.
    """
    with atomic_write(path) as f:
        f.write("{")
        for key, value in header.items():
            if key == "annotations":
                continue
            f.write(f"{dumps(key)}:")
            if isinstance(value, Iterator):
                _write_array(f, value)
            else:
                f.write(dumps(value))
            f.write(",")
        f.write('"annotations":')
        count = _write_array(f, annotations)
        f.write("}\n")
    return count


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically."""
    with atomic_write(path) as f:
        for record in records:
            f.write(dumps(record) + "\n")
