"""Micro-batching for a server: requests that arrive together are answered by one call.

Encoding one query costs nearly as much as encoding thirty (a transformer's fixed overhead per
call), and the funnel re-ranks a whole batch with one product per stage. So concurrent requests
are queued, and one worker thread takes everything that is waiting and answers it in one call.
A lone request is never held back to wait for company: batches form only from requests that
arrived while the previous batch was being answered. A batch that fails as a whole is answered
again item by item, so one bad request fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")

_STOP = object()
LOG = logging.getLogger("matryoshka")


class MicroBatcher(Generic[Item, Answer]):
    """``submit(item)`` returns a Future; ``answer_batch(items)`` returns one answer (or exception) per item."""

    def __init__(
        self,
        answer_batch: Callable[[Sequence[Item]], Sequence[Answer | BaseException]],
        max_batch: int = 64,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        """``after_batch``: upkeep run once a batch is answered, before the next is taken (its
        failures are its own: they reach no caller)."""
        self._answer_batch = answer_batch
        self._after_batch = after_batch
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0
        self.retried = 0  # batches that failed as a whole and were answered item by item

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="matryoshka-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, item: Item) -> Future:
        if self._thread is None:
            raise RuntimeError("the batcher is not running: call start() first")
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.max_batch:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is _STOP:
                    stopping = True
                    break
                batch.append(waiting)
            self._answer(batch)
            if stopping:
                return

    def _answer(self, batch: list[tuple[Item, Future]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            answers = list(self._answer_batch([item for item, _ in batch]))
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the others: answer each alone
            if len(batch) == 1:
                answers = [exc]
            else:
                self.retried += 1
                answers = [self._answer_one(item) for item, _ in batch]
        for (_, future), answer in zip(batch, answers):
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        if self._after_batch is not None:
            try:
                self._after_batch()
            except Exception:  # noqa: BLE001 - upkeep that fails is tried again after the next batch
                LOG.exception("upkeep after a batch failed; it is tried again after the next one")

    def _answer_one(self, item: Item) -> Answer | BaseException:
        try:
            return self._answer_batch([item])[0]
        except Exception as exc:  # noqa: BLE001 - this item's own failure, for its caller alone
            return exc
