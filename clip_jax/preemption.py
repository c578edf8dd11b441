"""Preemption: a SIGTERM (a preemption notice) makes the run save at the next step boundary
and exit cleanly; with several processes, all of them at the same step."""

from __future__ import annotations

import signal

import jax


class Preemption:
    """When to save and exit on a preemption notice (SIGTERM): ``reached(step)`` at each step
    boundary; the run then saves that step (forced) and exits cleanly.

    One process: a SIGTERM handler sets a flag, read at the next step boundary. Several
    processes: each host may get the signal at a different step, and a save is a collective, so
    they must agree on the step: JAX's preemption sync manager (which owns SIGTERM once
    ``jax.distributed`` is initialised) propagates the notice and names the same sync step on
    every host; orbax's ``CheckpointManager.reached_preemption`` reads it (a local check).
    Without ``jax.distributed`` that manager does not exist, hence the handler of our own.
    ``checkpointer``: the run's :class:`clip_jax.checkpoint.Checkpointer`.
    """

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.requested = False
        self._old = None
        self._multi = jax.process_count() > 1

    def __enter__(self):
        if not self._multi:
            try:
                self._old = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread
                self._old = None
        return self

    def _handle(self, *_):
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._multi:
            self.requested = self.requested or self.checkpointer.reached_preemption(step)
        return self.requested

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
