"""`EngineBackend`: the models in a process of their own, behind the same `GenerationBackend` interface."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from latentmem.errors import LatentMemError, ModelLoadError
from latentmem.sampling import SamplingConfig
from latentmem.serve.backend import Finished, GenerationRequest, InProcessBackend, Tokens
from latentmem.serve.engine import EngineBackend
from latentmem.serve.errors import ServerBusyError
from serve_fixtures import save_weaver

MODEL = "tiny-qwen2"
PROMPTS = [f"note {i}: " + "the quick brown fox " * i for i in range(5)]
LONG = "the the the"  # greedy tiny-qwen2 runs 249 tokens on this prompt before its EOS


@pytest.fixture(scope="module")
def engine():
    backend = EngineBackend(MODEL, max_batch=4, max_queue=2, threads=1)
    yield backend
    backend.close()


def _request(backend, text: str, n: int, sampling=None, seed=None) -> GenerationRequest:
    ids = backend.get(MODEL).tokenizer(text)["input_ids"]
    return GenerationRequest(MODEL, text, ids, n, sampling=sampling or SamplingConfig(), seed=seed)


async def _events(backend, request: GenerationRequest, delay: float = 0.0) -> tuple[list[int], Finished]:
    await asyncio.sleep(delay)
    tokens, last = [], None
    async for event in backend.stream(request):
        if isinstance(event, Tokens):
            tokens += event.ids
        else:
            last = event
    return tokens, last


def _idle(backend, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while any(load.decoding or load.waiting for load in backend.load_now()):
        assert time.monotonic() < deadline, backend.load_now()
        time.sleep(0.01)


def test_engine_replies_equal_replies_decoded_alone_in_this_process(engine):
    alone = InProcessBackend.load(MODEL)
    sampled = SamplingConfig(do_sample=True, temperature=0.9, top_p=0.9, repetition_penalty=1.2)

    def requests(backend):
        greedy = [_request(backend, p, 5 + 3 * i) for i, p in enumerate(PROMPTS)]
        return [*greedy, _request(backend, "a sampled one", 9, sampled, seed=3)]

    async def run():
        one_by_one = [await _events(alone, r) for r in requests(alone)]
        # more requests than rows (4): some wait in the queue, then join the running batch
        together = await asyncio.gather(
            *[_events(engine, r, 0.003 * i) for i, r in enumerate(requests(engine))]
        )
        return one_by_one, list(together)

    try:
        one_by_one, together = asyncio.run(run())
    finally:
        alone.close()
    assert [t for t, _ in together] == [t for t, _ in one_by_one]
    assert [f.reason for _, f in together] == [f.reason for _, f in one_by_one]
    assert len({len(t) for t, _ in together}) > 1
    loads = {load.model: load for load in engine.load_now()}
    assert loads[MODEL].batches > 0 and loads[MODEL].rows > loads[MODEL].batches  # rows shared steps


def _steps(backend) -> int:
    return next(load.batches for load in backend.load_now() if load.model == MODEL)


def test_a_stream_closed_early_frees_its_row_in_the_engine(engine):
    tokens, _ = asyncio.run(_events(engine, _request(engine, LONG, 900)))
    assert len(tokens) >= 200  # the premise: left alone, this row decodes for hundreds of steps
    before = _steps(engine)

    async def run():
        stream = engine.stream(_request(engine, LONG, 900))
        async for event in stream:
            assert isinstance(event, Tokens)
            break
        await stream.aclose()  # what the server does when the client disconnects

    asyncio.run(run())
    _idle(engine)
    assert _steps(engine) - before < 50  # the cancel reached the engine at once


def test_admission_is_refused_beyond_the_batch_and_queue_before_the_engine_sees_it(engine):
    async def run():
        requests = [_request(engine, LONG, 900) for _ in range(6)]  # 4 rows + 2 waiting, for 249 steps
        streams = [engine.stream(r) for r in requests]
        with pytest.raises(ServerBusyError) as refused:
            engine.stream(_request(engine, "one too many", 4))
        for stream in streams:
            await stream.aclose()
        return refused.value

    refused = asyncio.run(run())
    assert refused.status == 429 and refused.headers() == {"Retry-After": "1"}
    _idle(engine)
    tokens, finished = asyncio.run(_events(engine, _request(engine, "after", 3)))  # rows are free again
    assert len(tokens) >= 1 and isinstance(finished, Finished)


def test_unknown_model_is_404_and_a_load_failure_is_raised_in_the_server_process(engine):
    with pytest.raises(LatentMemError) as unknown:
        engine.get("nope")
    assert getattr(unknown.value, "status", None) == 404
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        EngineBackend("no-such-model", threads=1)


def test_close_drains_the_reply_in_flight_and_an_engine_that_dies_fails_its_requests():
    backend = EngineBackend(MODEL, max_batch=2, max_queue=0, threads=1)

    async def drained():
        stream = backend.stream(_request(backend, "drain me", 12))
        first = await anext(stream)
        closing = threading.Thread(target=backend.close)
        closing.start()  # refuses new work at once, lets this reply finish
        await asyncio.sleep(0.05)
        with pytest.raises(ServerBusyError) as refused:
            backend.stream(_request(backend, "too late", 2))
        rest = [event async for event in stream]
        await asyncio.to_thread(closing.join)
        return first, rest, refused.value

    first, rest, refused = asyncio.run(drained())
    assert refused.status == 503
    assert isinstance(rest[-1], Finished)
    assert len(first.ids) + sum(len(e.ids) for e in rest if isinstance(e, Tokens)) >= 1
    assert not backend._process.is_alive()

    dying = EngineBackend(MODEL, max_batch=2, max_queue=0, threads=1)

    async def killed():
        stream = dying.stream(_request(dying, LONG, 900))  # 249 steps: it is still decoding
        await anext(stream)
        dying._process.kill()
        with pytest.raises(LatentMemError, match="engine process has stopped"):
            async for _ in stream:
                pass
        with pytest.raises(ServerBusyError) as gone:
            dying.stream(_request(dying, "after", 2))
        return gone.value

    assert asyncio.run(killed()).status == 503
    dying.close()


def test_a_weaver_in_the_engine_reads_its_memory_vectors_and_reports_its_insertions(tmp_path):
    # Letters as delimiters: the random tiny model then inserts latents while it decodes.
    weaver = {
        "weaver": save_weaver(
            tmp_path / "weaver", delimiters=("e", "o", "s", "t"), max_inference_insertions=8
        )
    }
    alone = InProcessBackend.load(MODEL, memgen=weaver)
    engine = EngineBackend(MODEL, memgen=weaver, max_batch=4, max_queue=2, threads=1)
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal((m, 32)).astype(np.float32) if m else None for m in (0, 2, 1)]

    def requests(backend):
        ids = [backend.get("weaver").tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
        return [
            GenerationRequest("weaver", p, i, 12, memory_vectors=v)
            for p, i, v in zip(PROMPTS[:3], ids, vectors, strict=True)
        ]

    async def run():
        one_by_one = [await _events(alone, r) for r in requests(alone)]
        together = await asyncio.gather(*[_events(engine, r) for r in requests(engine)])
        return one_by_one, list(together)

    try:
        one_by_one, together = asyncio.run(run())
    finally:
        engine.close()
        alone.close()
    assert together == one_by_one
    assert any(finished.insertions for _, finished in together)
    assert {m.name: m.kind for m in engine.models()} == {MODEL: "reasoner", "weaver": "memgen"}
