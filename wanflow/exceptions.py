"""wanflow's own exceptions, importable without torch, diffusers or MLflow (so the CLI can catch them cheaply)."""

import errno


class ModelNotFoundError(FileNotFoundError):
    """A preset's weights are not where wanflow looked; the message lists the places and how to get them."""


class ModelLoadError(OSError):
    """A preset's weights are there but cannot be read: a truncated or corrupt weights file, or a component folder
    without weights. The message starts with ``model_dir:`` and names the file."""


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; the message names the URI."""


class DiskFullError(OSError):
    """A file could not be written because the disk (or the user's quota) is full; the message says where.
    ``errno`` is ``ENOSPC``; ``str()`` is the message alone."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


#: errno values that mean "no room left" (a full disk, or a full quota).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError for a full disk or quota (by errno, or by ffmpeg's message)."""
    if isinstance(error, DiskFullError):
        return True
    if not isinstance(error, OSError):
        return False
    return error.errno in DISK_FULL_ERRNOS or "No space left on device" in str(error)
