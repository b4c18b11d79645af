"""``wsgi.file_wrapper``: a file returned this way is sent with the loop's ``sendfile`` where the transport allows
it, and read in blocks on the worker thread otherwise (TLS, uvloop, non-regular files)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

__all__ = ["FileWrapper"]


class FileWrapper:
    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

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
