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


class ScheduleError(MatryoshkaError):
    """A funnel schedule that cannot work (found before any search starts)."""


class TrainingError(MatryoshkaError):
    """Training data or settings that cannot be trained on."""


class UsageError(MatryoshkaError):
    """Options or arguments that do not fit together."""


class FilterError(MatryoshkaError):
    """A metadata filter that cannot be applied: bad JSON, an unknown operator or field, or a value
    of the wrong type; the message gives the place in the filter (``filter.year.$gte``)."""
