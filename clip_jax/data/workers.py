"""Where the train stream's batch makers run: inline, in threads or in spawned processes.

Each worker runs one :class:`clip_jax.data.stream.BatchMaker` (its consumer's stream) and sends
``(batch, state)`` pairs through a bounded queue; a :class:`Collector` thread takes them round
robin (batch ``k`` from worker ``k % workers``) ahead of use, so the batch sequence does not
depend on timing, nor on processes vs threads.

``worker_mode``: ``"process"`` (default; ``spawn``-started processes, so safe with JAX already
running) or ``"thread"`` (same batches either way). Measured (2-core machine,
``benchmarks/data_pipeline.py``, with the former PIL decode + resize; simplejpeg and OpenCV
release the GIL too): decoding and resizing release the GIL, so on an idle interpreter threads
match processes (~440 vs ~370-400 images/s, one worker: no pickling); but with a busy Python
thread beside them (the train loop) thread workers fell to ~140 images/s against ~210 for a
process, and tar parsing, tokenisation and the shuffle are Python code that cannot run in
parallel in threads, hence processes by default.

Processes re-import nothing of ``__main__`` unless the tokenizer needs it (so ``python -m
clip_jax.train`` does not load JAX in every worker); scripts that define their tokenizer in
``__main__`` need the usual ``if __name__ == "__main__":`` guard. A worker's exception is sent
to the consumer and re-raised there (with the worker's traceback as a note).

Background threads are stopped at interpreter exit (:func:`stop_at_exit`) when their owner was
not closed: CPython ends a daemon thread that wakes up during finalization with
``pthread_exit``, and where its stack holds C++ frames that aborts the whole process
("terminate called without an active exception", exit 134) after the program has finished.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import pickle
import queue
import sys
import threading
import traceback
import weakref

from clip_jax.data.stream import BatchMaker

_LIVE: weakref.WeakSet = weakref.WeakSet()


def stop_at_exit(owner) -> None:
    """Have ``owner.close()`` called at interpreter exit if it is still alive then (it must be
    safe to call twice), so that no background thread of ours outlives the program."""
    _LIVE.add(owner)


@atexit.register
def _close_live() -> None:
    for owner in list(_LIVE):
        try:
            owner.close()
        except Exception:  # noqa: BLE001 - exiting anyway; the others must still stop
            pass


class Inline:
    """The batch maker run inside the calling thread (``workers=0``)."""

    def __init__(self, spec, tokenizer, state):
        self.worker = BatchMaker(spec, tokenizer, state)

    def get(self):
        return self.worker.next_batch(), self.worker.state()

    def close(self):
        self.worker.close()


def _worker_loop(spec, tokenizer, state, out, stop) -> None:
    """Produce batches into ``out`` until ``stop`` is set; an error is sent as a message."""
    try:
        worker = BatchMaker(spec, tokenizer, state)
        while not stop.is_set():
            msg = ("batch", worker.next_batch(), worker.state())
            while not stop.is_set():
                try:
                    out.put(msg, timeout=0.2)
                    break
                except queue.Full:
                    continue
        worker.close()
        if hasattr(out, "cancel_join_thread"):
            out.cancel_join_thread()  # stopped: unread batches may be dropped at exit
    except BaseException as e:  # noqa: BLE001 - reported to the consumer
        tb = traceback.format_exc()
        try:
            pickle.dumps(e)
            payload = e
        except Exception:
            payload = None
        try:
            out.put(("error", payload, repr(e), tb), timeout=5)
        except Exception:
            pass


@contextlib.contextmanager
def _main_not_reimported(args):
    """Keep spawned workers from re-importing ``__main__`` when they need nothing from it.

    ``spawn`` runs the parent's main module again in each child (for ``python -m
    clip_jax.train`` that imports JAX: ~0.5 s and ~130 MB per worker). If the worker's
    arguments do not pickle anything defined in ``__main__``, hide it while starting.
    """
    main = sys.modules.get("__main__")
    try:
        needed = main is None or b"__main__" in pickle.dumps(args)
    except Exception:
        needed = True
    if needed:
        yield
        return
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__spec__", "__file__")}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                main.__dict__.pop(k, None)
            else:
                main.__dict__[k] = v


class Background:
    """A worker in a thread or a process, feeding a bounded queue."""

    def __init__(self, spec, tokenizer, state, mode: str, prefetch: int):
        self.name = spec.name
        if mode == "thread":
            self.queue, self.stop = queue.Queue(prefetch), threading.Event()
            self.task = threading.Thread(target=_worker_loop, name=f"clip_jax-{spec.name}",
                                         args=(spec, tokenizer, state, self.queue, self.stop),
                                         daemon=True)
            stop_at_exit(self)
        else:
            ctx = multiprocessing.get_context("spawn")
            self.queue, self.stop = ctx.Queue(prefetch), ctx.Event()
            self.task = ctx.Process(target=_worker_loop, name=f"clip_jax-{spec.name}",
                                    args=(spec, tokenizer, state, self.queue, self.stop),
                                    daemon=True)
            with _main_not_reimported((spec, tokenizer, state)):
                self.task.start()
            return
        self.task.start()

    def get(self, stop: threading.Event | None = None):
        """(batch, state) of the worker's next batch; None once ``stop`` is set."""
        while True:
            if stop is not None and stop.is_set():
                return None
            try:
                msg = self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.task.is_alive():
                    code = getattr(self.task, "exitcode", None)
                    raise RuntimeError(f"data {self.name} stopped unexpectedly"
                                       + (f" (exit code {code})" if code is not None else "")
                                       ) from None
                continue
            if msg[0] == "batch":
                return msg[1], msg[2]
            _, exc, text, tb = msg
            if isinstance(exc, BaseException):
                exc.add_note(f"in data {self.name}:\n{tb}")
                raise exc
            raise RuntimeError(f"data {self.name} failed: {text}\n{tb}")

    def close(self):
        self.stop.set()
        if isinstance(self.task, threading.Thread):
            self.task.join(timeout=5)
            return
        try:  # unblock a worker waiting on a full queue
            while True:
                self.queue.get_nowait()
        except Exception:
            pass
        self.task.join(timeout=5)
        if self.task.is_alive():
            self.task.terminate()
            self.task.join(timeout=5)
        self.queue.close()
        self.queue.cancel_join_thread()


class Collector:
    """A thread taking the workers' batches round robin (uint8 as they come), ahead of use."""

    def __init__(self, runners: list[Background], first_batch: int, prefetch: int):
        self.runners, self.queue = runners, queue.Queue(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first_batch,), daemon=True,
                                       name="clip_jax-data-collector")
        self.thread.start()
        stop_at_exit(self)

    def _put(self, msg) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self, k: int) -> None:
        try:
            while not self.stop.is_set():
                w = k % len(self.runners)
                got = self.runners[w].get(self.stop)
                if got is None:
                    return
                batch, state = got
                self._put(("batch", batch, w, state))
                k += 1
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
            self._put(("error", e))

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("data collector thread stopped") from None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
