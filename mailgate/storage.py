"""Attachment files, content-addressed (by SHA-256) under the data directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class AttachmentStore:
    """Files by SHA-256 under `root`: the same file sent twice is kept once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store `data`; return its SHA-256 and whether this call created the file."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.exists():
            return digest, False
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, sync, rename, sync the folder: after a crash the file is
        # either whole or absent, never a committed row pointing at half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return digest, True

    def get(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def discard(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)
