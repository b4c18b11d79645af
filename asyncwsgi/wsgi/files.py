"""``wsgi.file_wrapper``: a file returned this way is sent with the loop's ``sendfile`` where the transport allows
it, and read in blocks on the worker thread otherwise (TLS, uvloop, non-regular files)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

__all__ = ["FileWrapper"]


class FileWrapper:
    """Iterates ``filelike`` in ``blksize`` blocks. It is its own iterator and exposes ``seekable``/``seek``/``tell``
    (as werkzeug's wrapper does), so middleware that serves byte ranges from it (Flask's ``send_file``) can seek the
    file and close it through us."""

    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if not data:
            raise StopIteration
        return bytes(data)

    def seekable(self) -> bool:
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable()) if seekable is not None else hasattr(self.filelike, "seek")

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.filelike.seek(offset, whence))

    def tell(self) -> int:
        return int(self.filelike.tell())

    def sendfile_span(self) -> tuple[int, int] | None:
        """``(offset, count)`` still to send if this wraps a regular file on disk, else None."""
        try:
            fd = self.filelike.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or "b" not in getattr(self.filelike, "mode", "b"):
            return None
        try:
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return None
        return offset, max(0, st.st_size - offset)
