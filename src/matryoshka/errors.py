"""The errors a user can fix, with one base class.

Anything raised as a :class:`MatryoshkaError` is a problem with the input (a file, an option, a
request, an index on disk), and its message says which one and what is wrong: the command line
prints it as one line and exits with status 2, the server answers it with a 4xx. Any other
exception is a bug, and shows its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MatryoshkaError(Exception):
    """A problem the user can fix; the message names the file, line, field or value."""


class DataError(MatryoshkaError):
    """A problem in an input file, located by path and (where it applies) 1-based line number."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path, self.line, self.problem = str(path), line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class ModelError(MatryoshkaError):
    """A model name or path that cannot be loaded, or a bad encoding request."""


class AdapterError(MatryoshkaError):
    """An adapter file or fitting input that cannot be used."""


class StoreError(MatryoshkaError):
    """An index that cannot be opened, built or searched as asked."""


class BusyError(StoreError):
    """Another writer holds the index; the write was not started (try again when it is done)."""


class StorageError(StoreError):
    """The disk or the system refused a write or a read (full, read-only, out of file handles);
    nothing was changed. ``status`` is the HTTP status a server answers it with."""

    status = 500


class DiskFullError(StorageError):
    """No space left where the index lives; the write was not made."""

    status = 507


class ReadOnlyError(StorageError):
    """The index's place cannot be written (a read-only folder or file system)."""

    status = 503


class TooManyFilesError(StorageError):
    """The process has run out of file handles (``ulimit -n``)."""

    status = 503


class EndpointError(ModelError):
    """A remote embeddings endpoint failed or answered wrongly (after its retries); nothing of
    that answer was used. A server relaying it answers ``status``: the fault is upstream."""

    status = 502


class ScheduleError(MatryoshkaError):
    """A funnel schedule that cannot work (found before any search starts)."""


class TrainingError(MatryoshkaError):
    """Training data or settings that cannot be trained on."""


class UsageError(MatryoshkaError):
    """Options or arguments that do not fit together."""


class FilterError(MatryoshkaError):
    """A metadata filter that cannot be applied: bad JSON, an unknown operator or field, or a value
    of the wrong type; the message gives the place in the filter (``filter.year.$gte``)."""


def storage_error(exc: OSError, place: Path | str, doing: str = "write") -> StorageError:
    """What an ``OSError`` met while reading or writing an index at ``place`` means to its user,
    as one line: the cause, and that the index is as it was."""
    import errno
    import resource

    reason = exc.strerror or str(exc)
    short_write = exc.errno is None and "written" in str(exc)  # numpy's words for a write the disk cut short
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short_write:
        return DiskFullError(
            f"cannot {doing} the index at {place}: no space left on its disk ({reason}); "
            "the index is unchanged: free some space and try again"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ReadOnlyError(
            f"cannot {doing} the index at {place}: {reason} (a read-only place); the index is unchanged"
        )
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return TooManyFilesError(
            f"cannot {doing} the index at {place}: too many open files (this process may hold {limit}); "
            "raise the limit ('ulimit -n') or run 'matryoshka compact' to merge the index's segments"
        )
    return StorageError(f"cannot {doing} the index at {place}: {reason}")
