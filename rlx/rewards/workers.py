"""Persistent worker processes that run picklable calls under a hard time limit.

Reward code is untrusted in the sense that matters for a training run: a sympy simplification
can run for minutes, a code sandbox can segfault, a buggy reward can call `os._exit`. Each call
here runs in a child process; the parent waits with a deadline and, when it passes, kills the
child (its whole process group) and starts a fresh one. The run never stalls or dies with it.

Children are plain `python -c` subprocesses, not `multiprocessing` workers: they import only what
the call needs (never the trainer's `__main__`, never JAX), and starting them is safe from a
parent that already runs threads. Calls travel as pickles, so `fn` must be a module-level
function of an importable module (or a `functools.partial` of one); the child sees the parent's
`sys.path`.

Inside the child each call also runs under `signal.setitimer`, a soft limit that interrupts
pure-Python loops (most sympy hangs) and keeps the child alive; the parent's kill, `grace`
seconds later, catches the rest (C-level loops, deadlocks, crashes).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Outcome:
    """How one call ended: status is "ok", "timeout", "error" (it raised) or "crash" (it died)."""

    status: str
    value: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SoftTimeout(BaseException):
    """Raised inside a child when a call outlives its limit.

    A BaseException so that reward code's `except Exception:` (math-verify has several) cannot
    swallow it and carry on past the deadline.
    """


def _on_alarm(signum, frame):
    raise SoftTimeout()


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent dies.

    A worker may start workers of its own (the math verifier inside a reward worker); they sit
    in their own process groups, so when a parent is killed for a timeout nothing else would
    reach a grandchild stuck in C code. The signal follows the parent *thread* that spawned the
    child, hence `_SPAWNER` below.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an idle orphan still exits on EOF, a busy one at its soft limit


def serve(read_fd: int, write_fd: int) -> None:
    """Child loop: receive (fn, args, kwargs, timeout), send back (status, value, error)."""
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    _die_with_parent()
    signal.signal(signal.SIGALRM, _on_alarm)
    while True:
        try:
            fn, args, kwargs, limit = inbox.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed us: exit quietly
        except BaseException as e:  # noqa: BLE001 -- e.g. fn's module does not import here
            outbox.send(("error", None, f"the worker could not load the call ({e!r}); define the "
                         "function at module level of a module importable from sys.path"))
            continue
        try:
            if limit:
                signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                reply = ("ok", fn(*args, **kwargs), "")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except SoftTimeout:
            reply = ("timeout", None, f"soft time limit of {limit:.3g}s")
        except BaseException as e:  # noqa: BLE001 -- report everything; the parent decides
            reply = ("error", None, "".join(traceback.format_exception_only(type(e), e)).strip()
                     + "\n" + traceback.format_exc(limit=-3))
        try:
            outbox.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            outbox.send(("error", None, f"result of {fn!r} is not picklable: {e}"))
        except (BrokenPipeError, OSError):
            return


class _Child:
    """One subprocess and its two pipes."""

    def __init__(self):
        p_read, c_write = os.pipe()
        c_read, p_write = os.pipe()
        env = dict(os.environ)
        # The child must import the caller's modules (tests, rlx itself) the way the parent does.
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        code = "import sys; from rlx.rewards.workers import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(c_read), str(c_write)],
            pass_fds=(c_read, c_write), env=env, stdin=subprocess.DEVNULL,
            start_new_session=True)  # own process group: a kill takes its children with it
        os.close(c_read)
        os.close(c_write)
        self.inbox = Connection(p_read, writable=False)
        self.outbox = Connection(p_write, readable=False)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()


_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlx-worker-spawner")


class WorkerPool:
    """`num_workers` persistent children; `map` runs calls on them, each with its own deadline.

    Thread-safe: concurrent `map` calls are serialised. Children start lazily and are replaced
    after a timeout or crash; `restarts` counts replacements.
    """

    def __init__(self, num_workers: int = 1, *, grace: float = 1.0,
                 initializer: Callable | None = None, init_timeout: float = 120.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.grace = grace
        # Run once in every new child before its first call, outside any call's time limit
        # (heavy imports such as sympy would otherwise eat into the first call's budget).
        self.initializer = initializer
        self.init_timeout = init_timeout
        self.restarts = 0
        self._children: list[_Child | None] = [None] * num_workers
        self._lock = threading.Lock()

    def call(self, fn: Callable, *args, timeout: float, **kwargs) -> Outcome:
        return self.map(fn, [args], timeout=timeout, kwargs=[kwargs])[0]

    def map(self, fn: Callable, args_list: Sequence[tuple], *, timeout: float,
            kwargs: Sequence[dict] | None = None) -> list[Outcome]:
        """Run `fn(*args_list[i], **kwargs[i])` for every i; never raises for a bad call."""
        kwargs = kwargs if kwargs is not None else [{}] * len(args_list)
        tasks = [(fn, tuple(a), dict(k)) for a, k in zip(args_list, kwargs)]
        return self.run(tasks, timeout=timeout)

    def run(self, tasks: Sequence[tuple[Callable, tuple, dict]], *, timeout: float) -> list[Outcome]:
        """Run heterogeneous (fn, args, kwargs) tasks; results in task order."""
        with self._lock:
            return self._run(list(tasks), timeout)

    def _run(self, tasks, timeout):
        results: list[Outcome | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (task index, hard deadline)
        while pending or busy:
            for slot in range(self.num_workers):
                if slot in busy or not pending:
                    continue
                i = pending.pop()
                fn, args, kw = tasks[i]
                child = self._child(slot)
                try:
                    child.outbox.send((fn, args, kw, timeout))
                except (pickle.PicklingError, TypeError, AttributeError) as e:
                    results[i] = Outcome("error", error=(
                        f"cannot send {fn!r} to a worker process ({e}); reward functions and their "
                        "arguments must be picklable: define them at module level of an importable "
                        "module, not inside a function, a lambda or __main__"))
                    continue
                except (BrokenPipeError, OSError) as e:
                    self._replace(slot)
                    results[i] = Outcome("crash", error=f"worker died before the call: {e}")
                    continue
                busy[slot] = (i, time.monotonic() + timeout + self.grace)
            if not busy:
                continue
            now = time.monotonic()
            wait_for = max(0.0, min(deadline for _, deadline in busy.values()) - now)
            ready = wait([self._children[s].inbox for s in busy], timeout=wait_for)
            for slot in list(busy):
                i, deadline = busy[slot]
                child = self._children[slot]
                if child.inbox in ready:
                    try:
                        status, value, error = child.inbox.recv()
                        results[i] = Outcome(status, value, error)
                    except (EOFError, OSError, pickle.UnpicklingError) as e:
                        code = child.proc.poll()
                        self._replace(slot)
                        results[i] = Outcome("crash", error=f"worker exited (code {code}): {e!r}")
                    del busy[slot]
                elif time.monotonic() >= deadline:
                    self._replace(slot)
                    results[i] = Outcome("timeout", error=f"killed after {timeout + self.grace:.3g}s")
                    del busy[slot]
        return results  # type: ignore[return-value]

    def _child(self, slot: int) -> _Child:
        if self._children[slot] is None or self._children[slot].proc.poll() is not None:
            if self._children[slot] is not None:
                self._replace(slot)
            self._children[slot] = self._start()
        return self._children[slot]

    def _start(self) -> _Child:
        # Spawn from one long-lived thread: the kernel's parent-death signal follows the thread
        # that forked, and a caller's short-lived thread would take the worker down with it.
        child = _SPAWNER.submit(_Child).result()
        if self.initializer is None:
            return child
        try:
            child.outbox.send((self.initializer, (), {}, 0))
            reply = child.inbox.recv() if child.inbox.poll(self.init_timeout) else None
        except (EOFError, OSError):
            reply = None
        if reply is None or reply[0] != "ok":
            child.kill()
            why = reply[2] if reply else f"no reply within {self.init_timeout}s"
            raise RuntimeError(f"worker initializer {self.initializer!r} failed: {why}; check that "
                               "it imports in a fresh `python` with this sys.path")
        return child

    def _replace(self, slot: int) -> None:
        child = self._children[slot]
        if child is not None:
            child.kill()
            self.restarts += 1
        self._children[slot] = None

    def close(self) -> None:
        with self._lock:
            for slot, child in enumerate(self._children):
                if child is not None:
                    child.kill()
                self._children[slot] = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            for child in self._children:
                if child is not None:
                    child.kill()
        except Exception:  # noqa: BLE001 -- interpreter shutdown: best effort only
            pass
