"""The micro-batcher: concurrent submissions are answered together, each gets its own answer."""

from __future__ import annotations

import threading
import time

import pytest

from matryoshka.batching import MicroBatcher


def test_concurrent_items_are_batched_and_answered_in_order():
    seen: list[int] = []

    def answer(items):
        seen.append(len(items))
        time.sleep(0.05)  # while this batch is answered, the others queue up
        return [item * 2 if item != 7 else ValueError("seven") for item in items]

    batcher = MicroBatcher(answer, max_batch=8)
    batcher.start()
    futures = {}
    threads = [threading.Thread(target=lambda i=i: futures.__setitem__(i, batcher.submit(i))) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, future in futures.items():
        if i == 7:
            with pytest.raises(ValueError, match="seven"):
                future.result(timeout=10)
        else:
            assert future.result(timeout=10) == 2 * i
    batcher.stop()
    assert sum(seen) == 20 and len(seen) < 20 and max(seen) <= 8


def test_a_failing_batch_fails_each_of_its_items_and_the_worker_lives_on():
    calls = []

    def answer(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("store went away")
        return list(items)

    batcher = MicroBatcher(answer)
    with pytest.raises(RuntimeError):
        batcher.submit(1)  # not started yet
    batcher.start()
    with pytest.raises(RuntimeError, match="store went away"):
        batcher.submit(1).result(timeout=10)
    assert batcher.submit(2).result(timeout=10) == 2
    batcher.stop()


def test_a_poisoned_batch_is_answered_item_by_item_so_only_the_bad_item_fails():
    """One item that makes the whole batch call raise (as a text a tokenizer cannot take would)
    fails alone: the others of its batch are answered again, each on its own."""
    release = threading.Event()

    def answer(items):
        release.wait(timeout=10)
        if "poison" in items:
            raise UnicodeEncodeError("utf-8", "poison", 0, 1, "surrogates not allowed")
        return [item.upper() for item in items]

    batcher = MicroBatcher(answer, max_batch=64)
    batcher.start()
    first = batcher.submit("first")  # holds the worker while the rest queue up into one batch
    futures = {item: batcher.submit(item) for item in ["a", "b", "poison", "c", "d"]}
    release.set()
    assert first.result(timeout=10) == "FIRST"
    for item, future in futures.items():
        if item == "poison":
            with pytest.raises(UnicodeEncodeError):
                future.result(timeout=10)
        else:
            assert future.result(timeout=10) == item.upper()
    assert batcher.retried == 1
    batcher.stop()
