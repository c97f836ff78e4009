"""Spawned worker processes that die with the process that started them.

A process pool's workers block on a queue whose pipe they hold both ends of, so a driver killed
with ``kill -9`` (or a plain ``kill``) would leave them running forever, each holding its models
in memory. `QuietSpawnContext` starts workers that

* ask Linux for ``SIGKILL`` when their parent dies (``prctl(PR_SET_PDEATHSIG)``), and
* watch their parent from a thread (``os.getppid()`` every `WATCH_S` seconds; also where
  ``prctl`` is missing), exiting once it is gone,

both set up before the worker imports anything heavy: the process object unpickles through
`_revive`, in this light module, before its state (whose unpickling imports torch) is read.
They also start with SIGINT ignored (see `QuietProcess`).

This module imports only the standard library, so a worker reaches `_revive` at once.
"""

from __future__ import annotations

import multiprocessing.context as mpc
import os
import signal
import sys
import threading
import time

WATCH_S = 0.5  # how often a worker looks for its parent
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a child process: exit when process ``parent_pid`` (its parent) dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog alone
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="circuitkit-parent-watch", daemon=True).start()


def _revive(cls, parent_pid: int):
    """Unpickling a `QuietProcess` in the new process: watch the parent first, then build the object."""
    die_with_parent(parent_pid)
    return cls.__new__(cls)


class QuietProcess(mpc.SpawnProcess):
    """A spawned worker that starts with SIGINT ignored, from its first instruction, and dies
    with its parent (`die_with_parent`).

    Ctrl-C reaches the whole process group: the driver alone handles it (one message, no
    traceback per worker, even one still importing torch) and stops the workers. A child
    keeps an ignored SIGINT (Python installs KeyboardInterrupt only where the parent did not).
    """

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return super().start()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return super().start()
        finally:
            signal.signal(signal.SIGINT, previous)

    def __reduce__(self):
        # Pickled by the parent for the spawned child: `_revive` runs there before the state
        # (the pool's queues and initializer arguments) is unpickled.
        return _revive, (type(self), os.getpid()), self.__dict__


class QuietSpawnContext(mpc.SpawnContext):
    Process = QuietProcess
