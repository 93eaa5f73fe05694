"""What the server asks of whatever generates text, and the in-process implementation over our models.

The HTTP layer never touches a model: it renders and tokenizes the prompt, then calls
`GenerationBackend.stream(request)` and reads `Tokens` events until `Finished`. Everything else (stop
sequences, the response shapes, memory) stays above this line, so a backend that decodes many requests
together (`batching.BatchingBackend`), one that runs them in another process (`engine.EngineBackend`,
what `latentmem serve` runs), or one that forwards to other machines (docs/serving-at-scale.md) replaces
`InProcessBackend` without touching the routes. The backends here take work through `submit(request,
sink, key)` and hand events to an `EventSink`; `queued_stream` turns that into `stream`.

`InProcessBackend` serves three kinds of model on this process, one request at a time on one worker
thread (so the models never run concurrently and need no locks):

- `reasoner`: the plain model, decoded token by token on `KVDecoder` (each token streams as it comes);
- `memgen`: a trained MemGen weaver over its own copy of the reasoner, decoded by MemGen's `generate`
  (latent insertion; its tokens arrive when the reply is complete);
- `recall`: a model with recall memory and its bank, decoded by `RecallGenerator`.

All three pick tokens with the shared `SamplingConfig` processors, so a `temperature` or `top_p` means
the same on each.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.decoding import KVDecoder, left_padded
from latentmem.errors import ConfigError, LatentMemError
from latentmem.memgen.generate import GenerationConfig
from latentmem.memgen.model import LatentMemoryModel, RetrievedMemory
from latentmem.models import load_model, max_positions
from latentmem.sampling import SamplingConfig, select_next
from latentmem.serve.errors import NotFoundError

ModelKind = Literal["reasoner", "memgen", "recall"]
FinishReason = Literal["stop", "length"]
# A model without a position limit in its config still needs one to refuse prompts that cannot fit.
DEFAULT_CONTEXT = 4096


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A model the backend serves, as the HTTP layer sees it.

    `extra_slots`: the most positions generation adds beside the prompt and the new tokens (MemGen's
    latents), which the context must hold too. `memory_dim`: the dimension of memory vectors the model
    reads (a memgen-rag weaver), or None: retrieved memories then go into the prompt as text.
    """

    name: str
    kind: ModelKind
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    extra_slots: int = 0
    memory_dim: int | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


@dataclasses.dataclass
class GenerationRequest:
    """One completion to generate. `prompt` is the rendered text of `prompt_ids`.

    `memory_vectors` (M, memory_dim): retrieved memories for a model that reads vectors. `cancel`: set
    by the caller to stop early (a stop sequence was found, the client left); a backend checks it between
    tokens where it can.
    """

    model: str
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    seed: int | None = None
    memory_vectors: np.ndarray | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

    def __getstate__(self) -> dict:
        # An event does not cross processes: a pickled request arrives with a fresh, unset one.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cancel"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, cancel=threading.Event())


@dataclasses.dataclass(frozen=True)
class LatentInsertion:
    after_token: int  # index of the generated token the latents follow; -1: after the prompt
    latents: int


@dataclasses.dataclass(frozen=True)
class RecallEvent:
    at_token: int  # index of the generated token whose slot carried the recalled memory
    bank_id: int
    text: str


@dataclasses.dataclass(frozen=True)
class Tokens:
    """New completion tokens, in order (EOS included when the model emits it)."""

    ids: list[int]


@dataclasses.dataclass(frozen=True)
class Finished:
    """The last event of a stream: why generation ended, and what memory did on the way."""

    reason: FinishReason
    insertions: tuple[LatentInsertion, ...] = ()
    recalls: tuple[RecallEvent, ...] = ()


GenerationEvent = Tokens | Finished


@dataclasses.dataclass(frozen=True)
class ModelLoad:
    """A snapshot of one served model's work: requests `decoding` and `waiting` now, and since the start
    the `batches` run (decode steps of a continuously batched model, `generate` calls otherwise) and
    the `rows` they carried in all (rows / batches: the mean batch size)."""

    model: str
    decoding: int
    waiting: int
    batches: int
    rows: int


class GenerationBackend(Protocol):
    """What the server calls to generate; see the module docstring."""

    def models(self) -> list[ServedModel]:
        """Every model served, in a stable order."""
        ...

    def get(self, name: str) -> ServedModel:
        """The served model `name`; `NotFoundError` (404) when there is none."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """`Tokens` events as they are generated, then one `Finished`. Stopping the iteration early
        (closing it) cancels the request. Called before the response starts, so a backend may refuse
        the request right here (`ServerBusyError`: 429 with Retry-After) rather than inside a stream."""
        ...

    def close(self) -> None:
        """Stop accepting work and release the models."""
        ...

    def load_now(self) -> list[ModelLoad]:
        """What each model decodes and has waiting now, and its batches so far (for `/metrics`)."""
        ...


def not_served(name: str, served: int) -> NotFoundError:
    """The 404 for a model name that is not served here."""
    return NotFoundError(
        f"The model `{name}` does not exist; GET /v1/models lists the {served} served here",
        param="model",
        code="model_not_found",
    )


# ---- the in-process backend ------------------------------------------------------------------------


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids |= set(configured if isinstance(configured, list) else [configured])
    return frozenset(i for i in ids if i is not None)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device).manual_seed(seed)


Emit = Callable[[GenerationEvent], None]


class _Runner(Protocol):
    info: ServedModel

    def run(self, request: GenerationRequest, emit: Emit) -> Finished: ...


class _ReasonerRunner:
    """The plain model: one row on `KVDecoder`, a token per step, each emitted at once."""

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos = _eos_ids(model, tokenizer)
        self.info = ServedModel(name, "reasoner", tokenizer, max_positions(model) or DEFAULT_CONTEXT)

    @torch.no_grad()
    def run(self, request: GenerationRequest, emit: Emit) -> Finished:
        device = self.model.device
        history = torch.tensor([request.prompt_ids], device=device)
        generator = _generator(request.seed, device)
        decoder = KVDecoder(self.model)
        out = decoder.prefill(decoder.embed(history), torch.ones_like(history))
        for step in range(request.max_new_tokens):
            token = select_next(out.logits[:, -1], request.sampling, generator, history)
            emit(Tokens([int(token)]))
            if int(token) in self.eos or request.cancel.is_set():
                return Finished("stop")
            if step + 1 < request.max_new_tokens:
                history = torch.cat([history, token[:, None]], 1)
                out = decoder.extend(decoder.embed(token[:, None]))
        return Finished("length")


class _BatchRunner:
    """A model decoded in static batches (`batching._StaticWorker`): a subclass writes `fits` and
    `run_batch`; alone, a request is a batch of one."""

    def fits(self, requests: Sequence[GenerationRequest]) -> bool:
        raise NotImplementedError

    def run_batch(self, requests: Sequence[GenerationRequest]) -> list[tuple[list[int], Finished]]:
        raise NotImplementedError

    def run(self, request: GenerationRequest, emit: Emit) -> Finished:
        ((tokens, finished),) = self.run_batch([request])
        emit(Tokens(tokens))
        return finished

    @staticmethod
    def batchable(a: GenerationRequest, b: GenerationRequest) -> bool:
        return shares_a_call(a, b)


def shares_a_call(a: GenerationRequest, b: GenerationRequest) -> bool:
    """Whether `a` and `b` may share one batched `generate` call with each reply as it would be alone:
    the same model, greedy with the same settings (one call has one `SamplingConfig`, and a sampled reply
    follows its own seed's generator, which a shared call cannot give every row)."""
    return a.model == b.model and not a.sampling.do_sample and a.sampling == b.sampling


class _MemGenRunner(_BatchRunner):
    """A MemGen weaver: MemGen's own decoder, with retrieved memory vectors when the weaver reads them."""

    def __init__(self, name: str, model: LatentMemoryModel) -> None:
        self.model = model
        cfg = model.config
        self.eos = _eos_ids(model.reasoner, model.tokenizer)
        self.inference_latents = cfg.inference_latents if cfg.inserts_during_decoding else 0
        self.info = ServedModel(
            name,
            "memgen",
            model.tokenizer,
            max_positions(model.reasoner) or DEFAULT_CONTEXT,
            extra_slots=cfg.prompt_latents + self.inference_latents * cfg.max_inference_insertions,
            memory_dim=cfg.memory_dim,
        )

    def fits(self, requests: Sequence[GenerationRequest]) -> bool:
        """Whether `requests` together pass MemGen's window check (`check_generation_window`), which
        grows with the batch (its padded prompt, longest reply and insertion steps)."""
        memories = max(0 if r.memory_vectors is None else len(r.memory_vectors) for r in requests)
        try:
            self.model.check_generation_window(
                max(len(r.prompt_ids) for r in requests),
                len(requests),
                max(r.max_new_tokens for r in requests),
                memories,
            )
        except LatentMemError:
            return False
        return True

    @torch.no_grad()
    def run_batch(self, requests: Sequence[GenerationRequest]) -> list[tuple[list[int], Finished]]:
        """(tokens, Finished) per request from one `generate` call over the left-padded prompts; more
        than one request only when they are pairwise `batchable`. Each row is cut to its own
        `max_new_tokens`, and keeps only the insertions its shorter loop would have made (none after its
        last token), so a row reads as if it were generated alone."""
        device = self.model.device
        ids, mask = left_padded([r.prompt_ids for r in requests], self.model.tokenizer.pad_token_id)
        memory = None
        if any(r.memory_vectors is not None and len(r.memory_vectors) for r in requests):
            rows = [np.zeros((0, 0)) if r.memory_vectors is None else r.memory_vectors for r in requests]
            memory = RetrievedMemory.stack(rows, self.model.config.memory_dim)
        config = GenerationConfig(
            max_new_tokens=max(r.max_new_tokens for r in requests), sampling=requests[0].sampling
        )
        # One request: its own seed; a batch is greedy (`batchable`) and draws nothing.
        generator = _generator(requests[0].seed, device) if len(requests) == 1 else None
        result = self.model.generate(
            ids.to(device), mask.to(device), config, generator=generator, memory=memory
        )
        prompt_latents = self.model.config.prompt_latents
        out = []
        for b, request in enumerate(requests):
            n = min(int(result.lengths[b]), request.max_new_tokens)
            tokens = result.sequences[b, :n].tolist()
            served = bool(result.served[b])  # a row the prompt gate turned away got no latents
            insertions = [LatentInsertion(-1, prompt_latents)] if prompt_latents and served else []
            insertions += [
                LatentInsertion(i, self.inference_latents)
                for i in result.insertions[b]
                if i < request.max_new_tokens - 1
            ]
            reason: FinishReason = "stop" if tokens and tokens[-1] in self.eos else "length"
            out.append((tokens, Finished(reason, insertions=tuple(insertions))))
        return out


class _RecallRunner(_BatchRunner):
    """Recall memory: `RecallGenerator` over the model's bank."""

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, memory, bank):
        self.model, self.tokenizer, self.memory, self.bank = model, tokenizer, memory, bank
        self.eos = _eos_ids(model, tokenizer)
        self.info = ServedModel(name, "recall", tokenizer, max_positions(model) or DEFAULT_CONTEXT)

    def fits(self, requests: Sequence[GenerationRequest]) -> bool:
        """Always: positions count each row's own tokens, so a batch needs no more context than its rows."""
        return True

    def run_batch(self, requests: Sequence[GenerationRequest]) -> list[tuple[list[int], Finished]]:
        """(tokens, Finished) per request from one `RecallGenerator.generate` call over the left-padded
        prompts (pairwise `batchable` when more than one); each row cut to its own `max_new_tokens`, with
        the recalls made before that."""
        from latentmem.recall.generate import RecallGenerator

        generator = RecallGenerator(
            self.model, self.tokenizer, self.memory, self.bank, sampling=requests[0].sampling
        )
        # One request: its own seed; a batch is greedy (`batchable`) and draws nothing.
        seed = _generator(requests[0].seed, self.model.device) if len(requests) == 1 else None
        result = generator.generate(
            [r.prompt for r in requests],
            max_new_tokens=max(r.max_new_tokens for r in requests),
            generator=seed,
        )
        out = []
        for tokens, recalled, request in zip(result.token_ids, result.recalls, requests, strict=True):
            tokens = tokens[: request.max_new_tokens]
            recalls = tuple(
                RecallEvent(e.step, e.memory_id, e.text) for e in recalled if e.step < len(tokens)
            )
            reason: FinishReason = "stop" if tokens and tokens[-1] in self.eos else "length"
            out.append((tokens, Finished(reason, recalls=recalls)))
        return out


def load_runners(
    reasoner: str,
    *,
    name: str | None = None,
    memgen: Mapping[str, str | Path] | None = None,
    recall: Mapping[str, str | Path] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, _Runner]:
    """`reasoner` (a `load_model` name or directory) as `name` (default: `reasoner`), each saved MemGen
    weaver of `memgen` (name -> directory) and each recall memory run folder of `recall` (name ->
    directory with `recall.safetensors` and `bank/`), every one on its own copy of the reasoner (a
    weaver's LoRA and recall's new token rows change the model they sit on). The reasoner comes first."""
    from latentmem.recall.bank import MemoryBank
    from latentmem.recall.memory import RecallMemory

    name = name or reasoner
    names = [name, *(memgen or {}), *(recall or {})]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"model names must be unique; {duplicated[0]!r} is given twice")

    def base() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_model(reasoner, dtype=dtype, device=device, seed=seed)

    runners: dict[str, _Runner] = {name: _ReasonerRunner(name, *base())}
    for weaver_name, directory in (memgen or {}).items():
        model, tokenizer = base()
        weaver = LatentMemoryModel.from_pretrained(directory, model, tokenizer).eval()
        runners[weaver_name] = _MemGenRunner(weaver_name, weaver)
    for recall_name, directory in (recall or {}).items():
        model, tokenizer = base()
        memory = RecallMemory.load(directory, model, tokenizer).eval()
        bank = MemoryBank.load(Path(directory) / "bank")
        runners[recall_name] = _RecallRunner(recall_name, model.eval(), tokenizer, memory, bank)
    return runners


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException


class EventSink(Protocol):
    """Where a backend's worker threads hand events: `deliver` gets `(key, event)` pairs, the key being
    what the submitter gave with the request. Called from worker threads, a step's events at once."""

    def deliver(self, items: list[tuple[Any, GenerationEvent | _Failed]]) -> None: ...


@dataclasses.dataclass(frozen=True)
class LoopSink:
    """Events into `asyncio.Queue`s (the keys) read on `loop`: one wake-up of the loop per delivery.
    Equal for one loop, so that a worker groups every row read on it into one delivery."""

    loop: asyncio.AbstractEventLoop

    def deliver(self, items: list[tuple[asyncio.Queue, GenerationEvent | _Failed]]) -> None:
        # A closed loop (its server has stopped) has nobody left to read the events.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[asyncio.Queue, GenerationEvent | _Failed]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


def queued_stream(
    submit: Callable[[GenerationRequest, EventSink, Any], None], request: GenerationRequest
) -> AsyncIterator[GenerationEvent]:
    """`submit(request, sink, key)` with a sink into this event loop, and the request's events: the
    `GenerationBackend.stream` of a backend that has `submit`. Submitting happens now (a refusal raises
    here, before any response starts)."""
    queue: asyncio.Queue[GenerationEvent | _Failed] = asyncio.Queue()
    submit(request, LoopSink(asyncio.get_running_loop()), queue)
    return _queued_events(request, queue)


async def _queued_events(
    request: GenerationRequest, events: asyncio.Queue[GenerationEvent | _Failed]
) -> AsyncIterator[GenerationEvent]:
    """`request`'s events from its queue, until `Finished` (a `_Failed` raises its error); closing the
    iterator early sets `request.cancel`."""
    held: GenerationEvent | _Failed | None = None
    try:
        while True:
            event = held if held is not None else await events.get()
            held = None
            if isinstance(event, Tokens):
                # Tokens that queued up while this reader was busy go out as one event: under load
                # the server then sends fewer, larger chunks instead of falling further behind.
                ids = list(event.ids)
                while held is None and not events.empty():
                    queued = events.get_nowait()
                    if isinstance(queued, Tokens):
                        ids += queued.ids
                    else:
                        held = queued
                event = Tokens(ids)
            if isinstance(event, _Failed):
                raise event.error
            yield event
            if isinstance(event, Finished):
                return
    finally:
        request.cancel.set()  # a client that stopped reading frees its row at the next step


class SubmittingBackend:
    """What the backends that take work through `submit` share of `GenerationBackend`: the models they
    serve (`_infos`, name -> `ServedModel`) and `stream`, which is `submit` with a sink into this loop."""

    _infos: dict[str, ServedModel]

    def models(self) -> list[ServedModel]:
        return list(self._infos.values())

    def get(self, name: str) -> ServedModel:
        if name not in self._infos:
            raise not_served(name, len(self._infos))
        return self._infos[name]

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        return queued_stream(self.submit, request)

    def submit(self, request: GenerationRequest, sink: EventSink, key: Any) -> None:
        raise NotImplementedError


class InProcessBackend:
    """Models on this process, one request at a time (see the module docstring). Build with `load`, or
    from `load_runners`' runners."""

    def __init__(self, runners: Mapping[str, _Runner]) -> None:
        self._runners = dict(runners)
        self._waiting: collections.Counter[str] = collections.Counter()
        self._done: collections.Counter[str] = collections.Counter()
        self._running: str | None = None
        self._counting = threading.Lock()  # the event loop and the worker both update the counts
        # One worker: requests queue here in arrival order and the models never run concurrently.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="latentmem-generate")

    @classmethod
    def load(cls, reasoner: str, **options) -> InProcessBackend:
        """Serve what `load_runners(reasoner, **options)` loads."""
        return cls(load_runners(reasoner, **options))

    def models(self) -> list[ServedModel]:
        return [r.info for r in self._runners.values()]

    def get(self, name: str) -> ServedModel:
        return self._runner(name).info

    def _runner(self, name: str) -> _Runner:
        runner = self._runners.get(name)
        if runner is None:
            raise not_served(name, len(self._runners))
        return runner

    def load_now(self) -> list[ModelLoad]:
        with self._counting:  # one request per `run`: each is a batch of one
            return [
                ModelLoad(n, int(self._running == n), self._waiting[n], self._done[n], self._done[n])
                for n in self._runners
            ]

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        return queued_stream(self.submit, request)

    def submit(self, request: GenerationRequest, sink: EventSink, key: Any) -> None:
        """Queue `request` for the worker; its events go to `sink` under `key`."""
        runner = self._runner(request.model)

        def emit(event: GenerationEvent | _Failed) -> None:
            sink.deliver([(key, event)])

        def work() -> None:
            with self._counting:
                self._waiting[request.model] -= 1
            if request.cancel.is_set():  # the client left while the request waited for the worker
                emit(Finished("stop"))
                return
            self._running = request.model
            try:
                emit(runner.run(request, emit))
            except BaseException as exc:  # handed to the awaiting request, which raises it there
                emit(_Failed(exc))
            finally:
                self._running = None
                with self._counting:
                    self._done[request.model] += 1

        with self._counting:
            self._waiting[request.model] += 1
        self._executor.submit(work)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
