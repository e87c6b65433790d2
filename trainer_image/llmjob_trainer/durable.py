"""Files that survive a crash on the node that wrote them, with a checksum for the reader.

fsync flushes only the calling node's cache, so on a network filesystem (NFS, Lustre,
GPFS) each rank makes its own files durable. Checksums are zlib's crc32 (stdlib), computed
while the bytes are written, so no file is read twice.

FUSE object-store mounts (s3fs, gcsfuse, mountpoint-s3) may refuse rename, which the
POSIX commit marker needs; `rename_replaces` probes the volume once, and `publish`
then writes in place instead (an object store makes a whole object visible on close).
"""

import errno
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

CHUNK_BYTES = 1 << 22
# What a filesystem without (atomic) rename answers to os.replace.
NO_RENAME_ERRNOS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM, errno.EXDEV}


@dataclass(frozen=True)
class FileRecord:
    """What a rank reports about one file it wrote: the manifest's entry."""

    name: str
    size: int
    crc32: int


class ChecksummingWriter:
    """A write-only binary stream that counts and checksums what passes through."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.size = 0
        self.crc32 = 0

    def write(self, data: bytes | memoryview) -> int:
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def write_durably(path: Path, name: str, write: Callable[[BinaryIO], object]) -> FileRecord:
    """Writes `path` through `write`, fsyncs it, and returns its record under `name`."""
    with open(path, "wb") as handle:
        stream = ChecksummingWriter(handle)
        write(cast(BinaryIO, stream))  # a write-only stream is all torch.save needs
        handle.flush()
        os.fsync(handle.fileno())
    return FileRecord(name, stream.size, stream.crc32)


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Every file and directory under `directory` (for files this node wrote itself)."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsync_directory(path)
    fsync_directory(directory)


def rename_replaces(directory: Path) -> bool:
    """Whether os.replace over an existing file works on this volume (a probe, cleaned up)."""
    source = directory / f".llmjob-rename-probe-{os.getpid()}"
    target = directory / f".llmjob-rename-probe-{os.getpid()}.target"
    try:
        target.write_text("old")
        source.write_text("new")
        os.replace(source, target)
        return target.read_text() == "new"
    except OSError as err:
        if err.errno in NO_RENAME_ERRNOS:
            return False
        raise
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def publish(path: Path, text: str, rename_works: bool) -> None:
    """Readers see the old content or the new, never part of it, even after a crash.

    Without rename (object-store mounts) the old object is removed and the new one written
    whole: a reader may briefly find none, never a partial one.
    """
    if rename_works:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        path.unlink(missing_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    fsync_directory(path.parent)
