"""fairseq's batch-prefetching thread, stopped before the interpreter shuts down.

fairseq 0.12 fills each epoch's batches ahead of the training loop from a daemon thread
(``fairseq.data.iterators.BufferedIterator`` starts a ``BackgroundConsumer``; ``--data-buffer-size``,
10 by default). A run that stops before its epoch ends, at ``--max-update`` for instance, exits
while that thread is still collating batches. Python 3.11 ends a daemon thread that asks for the
GIL during finalisation with ``pthread_exit``; when the thread is inside a torch operator, the
unwinding crosses a C++ ``noexcept`` frame and the C++ runtime aborts the process:
``terminate called without an active exception``, exit status 134 (SIGABRT). The run has
finished and saved by then, but whoever checks the exit status (the project's race harness, a
cluster scheduler, ``set -e`` scripts) sees a crash. How often depends on how busy the thread is:
rarely in real runs (one of the test suite's tiny trainings, once in two full runs), every time
in the scenario of ``tests/test_drills_prefetch.py``.

:func:`install` makes ``BufferedIterator`` remember (weakly) each thread it starts and registers
:func:`stop_prefetch_threads` with :mod:`atexit`, which Python runs after joining the ordinary
threads and before finalisation: each live thread is told to stop after the batch under way, and
its queue is drained until it ends. The batches it drops were never going to be used.
"""

from __future__ import annotations

import atexit
import logging
import queue
import time
import weakref

logger = logging.getLogger(__name__)

_MARK = "_resmlp_remembers_its_thread"
_THREADS: "weakref.WeakSet" = weakref.WeakSet()


def stop_prefetch_threads(timeout: float = 10.0) -> int:
    """Stop every live ``BackgroundConsumer`` that a ``BufferedIterator`` started, within
    ``timeout`` seconds in all; returns how many were stopped. A thread still running at the
    deadline is left to fairseq's own ending, with a warning."""
    deadline = time.monotonic() + timeout
    stopped = 0
    for thread in list(_THREADS):
        if not thread.is_alive():
            continue
        # BackgroundConsumer.run breaks out of its loop once ``count >= _max_len`` after a put,
        # then puts its end marker: both puts need room in the queue, which the draining makes.
        thread._max_len = 0
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    thread._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.01)
        if thread.is_alive():
            logger.warning("fairseq's batch-prefetching thread did not stop within %.0f s; the process "
                           "may abort at exit (after everything was saved)", timeout)
        else:
            stopped += 1
    return stopped


def install() -> None:
    """Remember the prefetching threads and stop them at exit (idempotent)."""
    from fairseq.data import iterators

    cls = iterators.BufferedIterator
    if getattr(cls, _MARK, False):
        return
    create_consumer = cls._create_consumer

    def _create_consumer(self):
        create_consumer(self)
        _THREADS.add(self._consumer)

    _create_consumer.__doc__ = f"fairseq's ``BufferedIterator._create_consumer``, remembered for {__name__}."
    cls._create_consumer = _create_consumer
    setattr(cls, _MARK, True)
    atexit.register(stop_prefetch_threads)


__all__ = ["install", "stop_prefetch_threads"]
