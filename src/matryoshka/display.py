"""Progress for the command line: a live bar on a terminal, plain lines in a log.

A bar redrawn with carriage returns is unreadable once stdout is a file or a CI log, so when the
console is not a terminal the same calls print one line per tenth of the work instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LINE_STEP = 0.1  # a plain line for every tenth of a task


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    visible: bool = True
    started: float = field(default_factory=time.perf_counter)
    printed_step: int = -1


class LineProgress:
    """The part of ``rich.progress.Progress`` the CLI uses, printing plain lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._tasks: list[_Task] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, visible: bool = True, **_) -> int:
        self._tasks.append(_Task(description, total, visible=visible))
        return len(self._tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self._tasks[task_id]
        task.completed += advance
        self._report(task)

    def update(
        self,
        task_id: int,
        *,
        completed: float | None = None,
        total: float | None = None,
        visible: bool | None = None,
        description: str | None = None,
        **_,
    ) -> None:
        task = self._tasks[task_id]
        if description is not None:
            task.description, task.printed_step = description, -1
        if total is not None:
            task.total = total
        if visible is not None:
            task.visible = visible
        if completed is not None:
            task.completed = completed
        self._report(task)

    def _report(self, task: _Task) -> None:
        if not task.visible or not task.total:
            return
        step = int(min(task.completed / task.total, 1.0) / LINE_STEP)
        if step <= task.printed_step:
            return
        task.printed_step = step
        elapsed = time.perf_counter() - task.started
        self.console.print(
            f"{task.description}: {100 * min(task.completed / task.total, 1.0):.0f}% "
            f"({task.completed:,.0f} of {task.total:,.0f}), {elapsed:.0f} s",
            markup=False,
            highlight=False,
        )


def progress_display(console: Console) -> Progress | LineProgress:
    """A transient rich bar on a terminal; plain lines otherwise."""
    if console.is_terminal:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
    return LineProgress(console)


class TaskProgress:
    """Adapts ``progress(task, done, total)`` callbacks (the demo's) to a progress display,
    one bar or line series per task name."""

    def __init__(self, display: Progress | LineProgress) -> None:
        self.display = display
        self._ids: dict[str, int] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        if task not in self._ids:
            self._ids[task] = self.display.add_task(task, total=total)
        self.display.update(self._ids[task], completed=done, total=total)
