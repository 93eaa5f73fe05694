"""`EngineBackend`: the models in a process of their own, so that decoding and HTTP never wait for each other.

Why a process: a decode step of a small model is mostly Python (the layers' glue between short kernels),
and so is the HTTP side (request parsing, detokenising, one SSE chunk per token per client). In one process
the two take turns on one interpreter lock: measured on tiny-qwen2 with 16 streaming clients, the decode
thread's and the event loop's CPU times added up to the wall time (0.52 + 0.31 s of 0.91 s) while a core
sat idle. Here the engine process runs `BatchingBackend` (continuous batching, the MemGen and recall
workers, unchanged) and the server process keeps HTTP, prompts and memory; one core each at least.

The two talk over one `multiprocessing` pipe:

- server -> engine: `("submit", rid, request)`, `("cancel", rid)`, `("load", rid)`, `("close",)`;
- engine -> server: lists of `(rid, event)`, one message per delivery of a worker (a decode step of 16
  rows crosses the pipe once, not 16 times), `("loads", rid, [ModelLoad])`, and last `("closed",)`.

The engine has no event loop: its main thread reads commands and hands them to the workers, whose sink
(`_PipeSink`) writes their events to the pipe; the server's reader thread hands each message to the
requests' event loops.

Admission is decided in the server process, before any byte of a response is sent (429 with Retry-After,
the same bounds and messages as the workers': `Admission`); the engine's workers apply the same bounds,
and since a row is counted in the server until its last event has arrived, the engine never refuses a
request the server admitted. A cancel (the client left, a stop sequence was found) is sent the moment
`request.cancel` is set, and the engine's row stops at its next step. If the engine process dies, every
request in flight fails with a `LatentMemError` and later ones answer 503.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

import torch

from latentmem.errors import ConfigError, LatentMemError
from latentmem.serve.backend import (
    EventSink,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelLoad,
    ServedModel,
    SubmittingBackend,
    _Failed,
)
from latentmem.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, Admission, BatchingBackend
from latentmem.serve.errors import ServerBusyError


def default_threads() -> int:
    """Threads for the engine's kernels: every core but one, which the server process keeps (>= 1)."""
    return max(1, (os.cpu_count() or 1) - 1)


class _RemoteCancel(threading.Event):
    """`request.cancel` on the server side: setting it also tells the engine."""

    def __init__(self, on_set) -> None:
        super().__init__()
        self._on_set = on_set

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self._on_set()


@dataclasses.dataclass
class _Pending:
    sink: EventSink
    key: Any
    admission: Admission


class EngineBackend(SubmittingBackend):
    """A `GenerationBackend` whose models run in a child process (see the module docstring)."""

    def __init__(
        self,
        reasoner: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        threads: int | None = None,
        retry_after: int = 1,
        **options: Any,
    ) -> None:
        """Start the engine process, load `reasoner` and `options` there (as `BatchingBackend.load` does)
        and wait until it is ready; its load error, if any, is raised here. `threads`: the engine's torch
        threads (default: every core but one)."""
        if threads is not None and threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {threads}")
        context = multiprocessing.get_context("spawn")  # a fork would copy the server's threads' state
        self._conn, child = context.Pipe()
        limits = {"max_batch": max_batch, "max_queue": max_queue}
        self._process = context.Process(
            target=_engine_main,
            args=(child, reasoner, limits, options, threads or default_threads()),
            name="latentmem-engine",
            daemon=True,
        )
        self._process.start()
        child.close()
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._process.join()
            raise LatentMemError(
                f"the engine process exited while loading (exit code {self._process.exitcode})"
            ) from None
        if kind == "failed":
            self._process.join()
            raise payload
        infos, groups = payload
        self._infos: dict[str, ServedModel] = {info.name: info for info in infos}
        # One Admission per batching worker, as the engine's workers bound them.
        admissions: dict[str, Admission] = {}
        self._admission: dict[str, Admission] = {
            name: admissions.setdefault(group, Admission(max_batch, max_queue, retry_after))
            for name, group in groups.items()
        }
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._dead: str | None = None
        self._reader = threading.Thread(target=self._read, name="latentmem-engine-reader", daemon=True)
        self._reader.start()

    # ---- GenerationBackend ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: EventSink, key: Any) -> None:
        """Admit `request` (or raise: 404, 429, 503) and send it to the engine; its events go to `sink`."""
        self.get(request.model)
        if self._dead is not None:
            raise ServerBusyError(self._dead, retry_after=1, status=503)
        admission = self._admission[request.model]
        admission.enter()
        rid = next(self._ids)
        self._pending[rid] = _Pending(sink, key, admission)
        was_cancelled = request.cancel.is_set()
        request.cancel = _RemoteCancel(lambda: self._cancel(rid))
        try:
            self._send(("submit", rid, request))
        except BaseException:
            self._settle(rid)
            raise
        if was_cancelled:
            request.cancel.set()

    def close(self) -> None:
        """Refuse new requests, let the engine finish every admitted one, then stop it."""
        for admission in {id(a): a for a in self._admission.values()}.values():
            admission.close()
        with contextlib.suppress(OSError, LatentMemError):
            self._send(("close",))
        self._reader.join()
        self._process.join()

    def load_now(self) -> list[ModelLoad]:
        if self._dead is not None:  # nothing decodes or waits: /metrics keeps answering
            return []
        rid = next(self._ids)
        reply: concurrent.futures.Future = concurrent.futures.Future()
        self._replies[rid] = reply
        self._send(("load", rid))
        return reply.result(timeout=30)

    # ---- the pipe -----------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        if self._dead is not None:
            raise LatentMemError(self._dead)
        with self._send_lock:
            self._conn.send(message)

    def _cancel(self, rid: int) -> None:
        if rid not in self._pending:  # finished already: nothing left to stop
            return
        with contextlib.suppress(OSError, LatentMemError):  # an engine that is gone has nothing to stop
            self._send(("cancel", rid))

    def _settle(self, rid: int) -> _Pending | None:
        """Forget request `rid` (its last event is here): its row no longer counts against admission."""
        pending = self._pending.pop(rid, None)
        if pending is not None:
            pending.admission.leave()
        return pending

    def _read(self) -> None:
        """The reader thread: the events of every message waiting go to their sinks, one delivery per sink
        (under load several decode steps wait, and the event loop then wakes once for all of them)."""
        reason = None
        try:
            while reason is None:
                events: list[tuple[int, GenerationEvent | _Failed]] = []
                try:
                    message = self._conn.recv()
                    while isinstance(message, list):
                        events += message
                        if not self._conn.poll():
                            break
                        message = self._conn.recv()
                finally:  # what arrived before an engine died is delivered before its requests fail
                    self._deliver(events)
                if isinstance(message, list):
                    continue
                if message[0] == "loads":
                    self._replies.pop(message[1]).set_result(message[2])
                elif message[0] == "closed":
                    reason = "the engine process has stopped: the server is shutting down"
        except (EOFError, OSError):
            self._process.join(timeout=5)
            reason = f"the engine process has stopped (exit code {self._process.exitcode})"
        self._dead = reason
        lost = LatentMemError(self._dead)
        self._deliver([(rid, _Failed(lost)) for rid in list(self._pending)])
        for reply in self._replies.values():
            reply.set_exception(lost)

    def _deliver(self, items: list[tuple[int, GenerationEvent | _Failed]]) -> None:
        by_sink: dict[EventSink, list] = {}
        for rid, event in items:
            last = isinstance(event, (Finished, _Failed))
            pending = self._settle(rid) if last else self._pending.get(rid)
            if pending is not None:
                by_sink.setdefault(pending.sink, []).append((pending.key, event))
        for sink, batch in by_sink.items():
            sink.deliver(batch)


# ---- the engine process -----------------------------------------------------------------------------


def _picklable(event: GenerationEvent | _Failed) -> GenerationEvent | _Failed:
    """An event that crosses the pipe: an error that does not pickle travels as its message."""
    if isinstance(event, _Failed):
        try:
            pickle.dumps(event.error)
        except Exception:
            return _Failed(LatentMemError(f"{type(event.error).__name__}: {event.error}"))
    return event


class _PipeSink:
    """The engine's sink: a delivery is one message to the server process."""

    def __init__(self, conn: Connection, requests: dict[int, GenerationRequest]) -> None:
        self._conn, self._requests = conn, requests
        self._lock = threading.Lock()  # the workers' threads deliver concurrently

    def deliver(self, items: list[tuple[int, GenerationEvent | _Failed]]) -> None:
        for rid, event in items:
            if isinstance(event, (Finished, _Failed)):
                self._requests.pop(rid, None)
        self.send([(rid, _picklable(event)) for rid, event in items])

    def send(self, message: Any) -> None:
        with self._lock:
            self._conn.send(message)


def _engine_main(conn: Connection, reasoner: str, limits: dict, options: dict, threads: int) -> None:
    """The engine process: load the models, then serve the pipe's commands until "close"."""
    # The server process decides when to stop (it drains, then sends "close"); a Ctrl-C or SIGTERM sent
    # to the whole process group must not kill the engine under requests still in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        backend = BatchingBackend.load(reasoner, **limits, **options)
    except BaseException as exc:
        conn.send(("failed", _picklable(_Failed(exc)).error))
        return
    conn.send(("ready", (backend.models(), backend.groups())))
    requests: dict[int, GenerationRequest] = {}
    sink = _PipeSink(conn, requests)
    try:
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "submit":
                _, rid, request = message
                requests[rid] = request
                try:
                    backend.submit(request, sink, rid)
                except Exception as exc:  # the server admitted it, so this is a failure, not a refusal
                    sink.deliver([(rid, _Failed(exc))])
            elif kind == "cancel":
                if (request := requests.get(message[1])) is not None:
                    request.cancel.set()
            elif kind == "load":
                sink.send(("loads", message[1], backend.load_now()))
            elif kind == "close":
                break
    except (EOFError, OSError):  # the server process is gone: finish what is admitted, then stop
        pass
    backend.close()  # every admitted request finishes first; its events still go down the pipe
    with contextlib.suppress(OSError):
        sink.send(("closed",))
