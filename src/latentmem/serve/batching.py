"""Batching: requests for the same model that arrive while it is busy are decoded together.

`BatchingBackend` (what `latentmem serve` runs, in its engine process: `serve/engine.py`) routes each
request by model name to one of two workers, each a thread of its own that owns its models:

- the plain reasoner: *continuous* batching (`_ContinuousWorker`, below);
- MemGen weavers and recall memories: *static* batching (`_StaticWorker`, one worker for both): when it
  becomes free it takes the oldest waiting request and every other waiting one for the same model that may
  share its `generate` call (greedy, same settings: `shares_a_call`; a sampled request runs alone, on its
  own seed), up to `max_batch`, and decodes them in one batched call (`latentmem.memgen.generate`, or
  `RecallGenerator.generate`). A request that arrives during that call waits for the next one: neither
  decoder has a step at which a row could join.

Requests come in through `submit(request, sink, key)`; a worker hands its events to the request's
`EventSink`, one delivery per sink per step (`stream` is `submit` with a sink into the caller's event
loop; the engine process's sink is its pipe to the server).

The continuous loop: one `KVDecoder` holds every running row. Each loop turn it

1. admits waiting requests up to `max_batch` rows: the ones that arrived together are prefilled in one
   forward, left-padded (masked slots, positions counted over valid slots only), then their cache rows
   join the running batch (`KVDecoder.join`: the shorter side is left-padded with invalid slots; cached
   keys carry their rotary positions already, so nothing moves and nothing is recomputed);
2. picks every row's next token with the row's own sampling settings and generator, and emits it;
3. drops the rows that finished (EOS, their length, a cancel: the client left or a stop sequence was
   found) with `KVDecoder.select_rows`, which also drops left padding no remaining row needs;
4. feeds the remaining rows' tokens in one cached step.

So a new request joins at the next step and a finished one frees its row at once. A row's output does not
depend on its neighbours: padding slots are masked out (attention weight exactly 0) in its prefill and in
the batched steps; tests check that greedy and seeded sampled replies are identical alone and batched,
and for a MemGen batch (prefilled the same way) greedy replies with their latent insertions.

The alternative for the reasoner, a new batch cohort per arrival wave decoded in its own forward passes,
keeps caches untouched but runs one forward per cohort per step, which is what batching is meant to
avoid; merging costs one copy of the cache per admission instead.

Admission is bounded per worker: at most `max_batch` requests decode and `max_queue` more wait; beyond
that `stream` raises `ServerBusyError` (429 with `Retry-After`) at once, before any byte of a response is
sent. `close` refuses new work (503), lets every admitted request finish, then stops the workers.
`load_now` reports, per model, what decodes and waits now and how many batches ran with how many rows (the
server's `/metrics`).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import torch

from latentmem.decoding import KVDecoder, left_padded
from latentmem.errors import ConfigError
from latentmem.sampling import select_next
from latentmem.serve.backend import (
    EventSink,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelLoad,
    SubmittingBackend,
    Tokens,
    _BatchRunner,
    _Failed,
    _generator,
    _ReasonerRunner,
    load_runners,
)
from latentmem.serve.errors import ServerBusyError

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64


class Admission:
    """The bound on one worker's requests: at most `max_batch` decode and `max_queue` more wait. `enter`
    raises `ServerBusyError` (429 with Retry-After; 503 once closing) beyond that, before any byte of a
    response is sent; `leave` when a request's last event is out."""

    def __init__(self, max_batch: int, max_queue: int, retry_after: int) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch: must be >= 1, got {max_batch}")
        if max_queue < 0:
            raise ConfigError(f"max_queue: must be >= 0, got {max_queue}")
        self.max_batch, self.max_queue, self.retry_after = max_batch, max_queue, retry_after
        self.count = 0  # requests waiting or decoding
        self._closing = False
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self._closing:
                raise ServerBusyError("the server is shutting down", retry_after=self.retry_after, status=503)
            if self.count >= self.max_batch + self.max_queue:
                raise ServerBusyError(
                    f"the server is busy: {self.max_batch} requests are decoding and {self.max_queue} "
                    "waiting (--max-batch, --max-queue); retry later",
                    retry_after=self.retry_after,
                )
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1

    def close(self) -> None:
        """Refuse every later request (503)."""
        with self._lock:
            self._closing = True


@dataclasses.dataclass
class _Row:
    """One admitted request: what the worker needs to decode it and to hand its events back."""

    request: GenerationRequest
    sink: EventSink  # where its events go, under `key`
    key: Any
    generator: torch.Generator | None
    history: list[int]  # prompt, then the tokens generated so far (what a repetition penalty reads)
    generated: int = 0


class _Worker:
    """A thread that owns some models, with bounded admission, a queue of waiting rows and the hand-off
    of events to the readers' event loops. Subclasses write `_serve` (the thread's loop)."""

    def __init__(
        self, name: str, device: torch.device, *, max_batch: int, max_queue: int, retry_after: int
    ) -> None:
        self.device = device
        self.max_batch = max_batch
        self._admission = Admission(max_batch, max_queue, retry_after)
        self._waiting: collections.deque[_Row] = collections.deque()
        self._closing = False  # guarded by `_wake`
        # batches run and the rows they carried, per model (written by the worker only)
        self._batches: collections.Counter[str] = collections.Counter()
        self._batch_rows: collections.Counter[str] = collections.Counter()
        # The worker's events not yet handed to their sinks (see `_flush`).
        self._outbox: dict[EventSink, list[tuple[Any, GenerationEvent | _Failed]]] = {}
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=f"latentmem-{name}", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: EventSink, key: Any) -> None:
        """Admit `request` now (or raise `ServerBusyError`); its events go to `sink` under `key`."""
        generator = _generator(request.seed, self.device)
        row = _Row(request, sink, key, generator, list(request.prompt_ids))
        with self._wake:  # admitted and queued at once: `close` cannot stop the worker in between
            self._admission.enter()
            self._waiting.append(row)
            self._wake.notify()

    def close(self) -> None:
        """Refuse new requests, finish every admitted one, then stop the thread."""
        with self._wake:
            self._admission.close()
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def load_now(self, names: list[str]) -> list[ModelLoad]:
        """A snapshot of each model of `names` (this worker's)."""
        with self._wake:
            waiting = collections.Counter(row.request.model for row in self._waiting)
            decoding = self._decoding()
        return [ModelLoad(n, decoding[n], waiting[n], self._batches[n], self._batch_rows[n]) for n in names]

    def _decoding(self) -> collections.Counter[str]:
        """Rows decoding now, per model; called under `_wake`."""
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError

    def _send(self, row: _Row, event: GenerationEvent | _Failed) -> None:
        """Queue an event for `row`'s sink; `_flush` hands it over."""
        self._outbox.setdefault(row.sink, []).append((row.key, event))

    def _flush(self) -> None:
        """Hand every queued event to its sink: one delivery (one wake-up of an event loop, one message
        down a pipe) per sink per step, not one per row."""
        for sink, items in self._outbox.items():
            sink.deliver(items)
        self._outbox = {}

    def _finish(self, row: _Row, event: Finished | _Failed) -> None:
        self._send(row, event)
        self._admission.leave()

    def _count_batch(self, model: str, rows: int) -> None:
        self._batches[model] += 1
        self._batch_rows[model] += rows


class _StaticWorker(_Worker):
    """MemGen weavers, static batching (see the module docstring): one `generate` call at a time, over
    the oldest waiting request and the waiting ones that may share its call."""

    def __init__(self, runners: Mapping[str, _BatchRunner], **limits: Any) -> None:
        self._runners = dict(runners)
        self._running: tuple[str, int] | None = None  # (model, rows) of the call in progress
        device = next(iter(self._runners.values())).model.device
        super().__init__("static-batching", device, **limits)

    def _decoding(self) -> collections.Counter[str]:
        return collections.Counter(dict([self._running])) if self._running else collections.Counter()

    def _take_batch(self) -> list[_Row] | None:
        """The next batch (blocking while nobody waits); None: closed and idle."""
        with self._wake:
            while not self._waiting and not self._closing:
                self._wake.wait()
            if not self._waiting:
                return None
            first = self._waiting.popleft()
            runner, batch = self._runners[first.request.model], [first]
            for row in list(self._waiting):
                if len(batch) == self.max_batch:
                    break
                candidate = [*(r.request for r in batch), row.request]
                if runner.batchable(first.request, row.request) and runner.fits(candidate):
                    batch.append(row)
                    self._waiting.remove(row)
            self._running = (first.request.model, len(batch))
            return batch

    def _serve(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A client that left while waiting is answered without decoding.
            live = [row for row in batch if not row.request.cancel.is_set()]
            for row in batch:
                if row.request.cancel.is_set():
                    self._finish(row, Finished("stop"))
            if live:
                model = live[0].request.model
                try:
                    results = self._runners[model].run_batch([row.request for row in live])
                    self._count_batch(model, len(live))
                    for row, (tokens, finished) in zip(live, results, strict=True):
                        self._send(row, Tokens(tokens))
                        self._finish(row, finished)
                except Exception as exc:  # the batch's failure: every row of it reports it
                    for row in live:
                        self._finish(row, _Failed(exc))
            with self._wake:
                self._running = None
            self._flush()


class _ContinuousWorker(_Worker):
    """The plain reasoner, continuous batching (see the module docstring)."""

    def __init__(self, reasoner: _ReasonerRunner, **limits: Any) -> None:
        self._reasoner = reasoner
        super().__init__("batching", reasoner.model.device, **limits)

    def _decoding(self) -> collections.Counter[str]:
        return collections.Counter({self._reasoner.info.name: self._admission.count - len(self._waiting)})

    def _take_waiting(self, free: int) -> list[_Row] | None:
        """Up to `free` waiting requests (blocking while there is nothing to do); None: closed and idle."""
        with self._wake:
            while free == self.max_batch and not self._waiting and not self._closing:
                self._wake.wait()
            if free == self.max_batch and not self._waiting:
                return None
            return [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]

    @torch.no_grad()
    def _serve(self) -> None:
        batch: KVDecoder | None = None
        rows: list[_Row] = []
        logits = torch.empty(0)  # (len(rows), V): each row's next-token logits
        while True:
            joining = self._take_waiting(self.max_batch - len(rows))
            if joining is None:
                return
            live = []
            for row in joining:
                if row.request.cancel.is_set():  # the client left while waiting
                    self._finish(row, Finished("stop"))
                else:
                    live.append(row)
            joined = self._prefill(live)
            if joined is not None:
                decoder, first = joined
                if batch is None:
                    batch, logits = decoder, first
                else:
                    try:
                        batch.join([decoder])
                    except Exception as exc:  # a failed join leaves the cache unusable: fail its rows
                        for row in rows + live:
                            self._finish(row, _Failed(exc))
                        batch, rows, live = None, [], []
                    else:
                        logits = torch.cat([logits, first])
                rows += live
            if rows:
                try:
                    batch, rows, logits = self._step(batch, rows, logits)
                except Exception as exc:  # a failed step leaves the cache unusable: fail its rows
                    for row in rows:
                        self._finish(row, _Failed(exc))
                    batch, rows = None, []
            self._flush()

    def _prefill(self, joining: list[_Row]) -> tuple[KVDecoder, torch.Tensor] | None:
        """The joining rows' prompts in one forward, left-padded: their cache and first logits
        (len(joining), V); None when none joins or the prefill failed (its rows are told)."""
        if not joining:
            return None
        model = self._reasoner.model
        try:
            decoder = KVDecoder(model)
            ids, mask = left_padded([row.request.prompt_ids for row in joining], pad_id=0)
            ids, mask = ids.to(model.device), mask.to(model.device)
            return decoder, decoder.prefill(decoder.embed(ids), mask).logits[:, -1]
        except Exception as exc:  # these requests' failure; the running batch goes on
            for row in joining:
                self._finish(row, _Failed(exc))
            return None

    def _step(
        self, batch: KVDecoder, rows: list[_Row], logits: torch.Tensor
    ) -> tuple[KVDecoder | None, list[_Row], torch.Tensor]:
        """Pick and emit every row's next token, let finished rows go, feed the rest one step."""
        tokens = self._select(rows, logits)
        self._count_batch(self._reasoner.info.name, len(rows))
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.history.append(token)
            row.generated += 1
            self._send(row, Tokens([token]))
            reason: FinishReason | None = None
            if token in self._reasoner.eos or row.request.cancel.is_set():
                reason = "stop"
            elif row.generated >= row.request.max_new_tokens:
                reason = "length"
            if reason is None:
                keep.append(i)
            else:
                self._finish(row, Finished(reason))
        if not keep:
            return None, [], torch.empty(0)
        if len(keep) < len(rows):
            batch.select_rows(keep)
            rows = [rows[i] for i in keep]
        step = torch.tensor([[tokens[i]] for i in keep], device=logits.device)
        return batch, rows, batch.extend(batch.embed(step)).logits[:, -1]

    @staticmethod
    def _select(rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token by its own sampling settings (as `_ReasonerRunner` picks it alone)."""
        greedy = logits.argmax(-1).tolist()  # plain greedy rows, all at once
        tokens = []
        for i, row in enumerate(rows):
            sampling = row.request.sampling
            if not sampling.do_sample and sampling.repetition_penalty == 1.0:
                tokens.append(greedy[i])
                continue
            history = torch.tensor([row.history], device=logits.device)
            tokens.append(int(select_next(logits[i : i + 1], sampling, row.generator, history)))
        return tokens


class BatchingBackend(SubmittingBackend):
    """Every served model behind its batching worker (see the module docstring). Build with `load`."""

    def __init__(
        self,
        reasoner: _ReasonerRunner,
        static: Mapping[str, _BatchRunner] | None = None,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        retry_after: int = 1,
    ) -> None:
        """`reasoner` batched continuously, the weavers and recall memories of `static` batched statically
        (one worker); `max_batch` and `max_queue` bound each worker."""
        limits = {"max_batch": max_batch, "max_queue": max_queue, "retry_after": retry_after}
        self._reasoner = reasoner
        self._workers: list[tuple[_Worker, list[str]]] = [
            (_ContinuousWorker(reasoner, **limits), [reasoner.info.name])
        ]
        if static:
            self._workers.append((_StaticWorker(static, **limits), list(static)))
        self._infos = {reasoner.info.name: reasoner.info, **{n: r.info for n, r in (static or {}).items()}}
        self._route: dict[str, _Worker] = {n: w for w, names in self._workers for n in names}

    @classmethod
    def load(
        cls,
        reasoner: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        **options: Any,
    ) -> BatchingBackend:
        """Load what `load_runners(reasoner, **options)` loads and put each model behind its worker."""
        runners = load_runners(reasoner, **options)
        name, first = next(iter(runners.items()))  # load_runners puts the reasoner first
        assert isinstance(first, _ReasonerRunner)
        static = {n: r for n, r in runners.items() if n != name}
        return cls(first, static, max_batch=max_batch, max_queue=max_queue)

    # ---- GenerationBackend ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: EventSink, key: Any) -> None:
        """Admit `request` to its model's worker (or raise: 404, 429); its events go to `sink` under `key`."""
        self.get(request.model)  # 404 for an unknown name
        self._route[request.model].submit(request, sink, key)

    def groups(self) -> dict[str, str]:
        """Each served model's worker ("reasoner" or "static"): the models of one group share its
        `max_batch` and `max_queue`."""
        return {
            name: "reasoner" if isinstance(worker, _ContinuousWorker) else "static"
            for name, worker in self._route.items()
        }

    def close(self) -> None:
        """Refuse new requests, finish every admitted one, then stop the workers."""
        for worker, _ in self._workers:
            worker.close()

    def load_now(self) -> list[ModelLoad]:
        return [load for worker, names in self._workers for load in worker.load_now(names)]
