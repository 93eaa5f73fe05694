"""Continuous batching: exactness against one-at-a-time decoding, rows that join and leave, admission
limits (429 with Retry-After), a client that leaves mid-stream, a bounded load test with memory writes,
and SIGTERM draining a real `latentmem serve` process."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from latentmem.memory.vector import VectorMemory
from latentmem.sampling import SamplingConfig
from latentmem.serve.backend import Finished, GenerationRequest, InProcessBackend, Tokens
from latentmem.serve.batching import BatchingBackend
from latentmem.serve.errors import ServerBusyError
from serve_fixtures import EMBEDDER, free_port, running_server, save_recall, save_weaver, wait_until_serving

MODEL = "tiny-qwen2"


@pytest.fixture(scope="module")
def backends():
    batching = BatchingBackend.load(MODEL, max_batch=8, max_queue=4)
    alone = InProcessBackend.load(MODEL)
    yield batching, alone
    batching.close()
    alone.close()


def _request(backend, text: str, n: int, sampling=None, seed=None) -> GenerationRequest:
    ids = backend.get(MODEL).tokenizer(text)["input_ids"]
    return GenerationRequest(MODEL, text, ids, n, sampling=sampling or SamplingConfig(), seed=seed)


async def _tokens(backend, request: GenerationRequest, delay: float = 0.0) -> list[int]:
    await asyncio.sleep(delay)  # staggered arrivals: later requests join a batch already decoding
    out = []
    async for event in backend.stream(request):
        if isinstance(event, Tokens):
            out += event.ids
    return out


PROMPTS = [f"note {i}: " + "the quick brown fox " * i for i in range(6)]


def _busy(backend) -> bool:
    return any(load.decoding or load.waiting for load in backend.load_now())


def test_batched_replies_equal_replies_decoded_alone(backends):
    batching, alone = backends
    sampled = SamplingConfig(do_sample=True, temperature=0.9, top_p=0.9, repetition_penalty=1.2)

    def requests(backend):
        greedy = [_request(backend, p, 6 + 3 * i) for i, p in enumerate(PROMPTS)]
        return [*greedy, _request(backend, "a sampled one", 9, sampled, seed=3)]

    async def run():
        one_by_one = [await _tokens(alone, r) for r in requests(alone)]
        together = await asyncio.gather(
            *[_tokens(batching, r, delay=0.003 * i) for i, r in enumerate(requests(batching))]
        )
        return one_by_one, list(together)

    one_by_one, together = asyncio.run(run())
    assert together == one_by_one
    assert len({len(t) for t in together}) > 1  # rows of different lengths left at different steps


def test_a_row_that_is_left_is_freed_at_the_next_step(backends):
    batching, _ = backends
    forwards = 0

    def count(*_):
        nonlocal forwards
        forwards += 1

    hook = batching._reasoner.model.register_forward_hook(count)

    async def run():
        stream = batching.stream(_request(batching, "a long one", 1000))
        async for event in stream:
            assert isinstance(event, Tokens)
            break
        await stream.aclose()  # what the server does when the client disconnects

    try:
        asyncio.run(run())
        deadline = time.monotonic() + 10
        while _busy(batching):
            assert time.monotonic() < deadline, batching.load_now()
            time.sleep(0.01)
    finally:
        hook.remove()
    assert forwards < 10  # not the 1000 steps asked for


def test_admission_beyond_the_batch_and_queue_is_refused(backends):
    batching, _ = backends

    async def run():
        requests = [_request(batching, f"fill {i}", 1000) for i in range(12)]
        streams = [batching.stream(r) for r in requests]  # admitted at once, before any is read
        with pytest.raises(ServerBusyError) as refused:
            batching.stream(_request(batching, "one too many", 4))
        for request, stream in zip(requests, streams, strict=True):
            request.cancel.set()  # what closing a started stream does
            await stream.aclose()
        return refused.value

    refused = asyncio.run(run())
    assert refused.status == 429 and refused.headers() == {"Retry-After": "1"}


# ---- over HTTP ----------------------------------------------------------------------------------------


def test_full_server_answers_429_and_a_disconnect_frees_the_row(tmp_path):
    backend = BatchingBackend.load(MODEL, max_batch=1, max_queue=0)
    # The worker waits at its next forward pass until the gate opens: the only row stays taken, whatever
    # the machine's speed and wherever the random model would emit EOS.
    gate, forwards = threading.Event(), []
    backend._reasoner.model.register_forward_pre_hook(lambda *_: forwards.append(gate.wait(30)))
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 900}
    with (
        running_server(tmp_path, backend=backend) as (url, _),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        try:
            with http.stream("POST", "/v1/chat/completions", json={**ask, "stream": True}) as response:
                # Kept in a name: a discarded line iterator is finalised at once, and closing it closes
                # the response (the client would leave, and its row could free before the next POST).
                lines = response.iter_lines()
                next(lines)  # the reply has started: the only row is taken
                busy = http.post("/v1/chat/completions", json=ask)
                assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
                assert busy.json()["error"]["code"] == "server_busy"
        finally:  # (also when an assertion fails: a shut gate would hold the server's shutdown)
            gate.set()  # the client left: its row frees at the next step and the server keeps serving
        deadline = time.monotonic() + 20
        while (after := http.post("/v1/chat/completions", json={**ask, "max_tokens": 2})).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert after.status_code == 200, after.text
        # the left request freed its row long before its 900 tokens (at the cancel, or at the EOS the tiny
        # model emits within a few tokens): the prefill and a few steps of it, then the new one; how many
        # steps run between the gate opening and the cancel landing depends on the machine's load (10 seen)
        assert len(forwards) < 50


CLIENTS, REQUESTS = 16, 20


def test_load_no_5xx_and_every_acknowledged_write_is_kept(tmp_path):
    """16 clients x 20 requests (streamed and plain chats that write memories, direct memory adds), all
    against 127.0.0.1, bounded in time."""

    async def client(http: httpx.AsyncClient, c: int, acknowledged: dict[str, set[str]], statuses: list[int]):
        user = f"user{c}"
        acknowledged[user] = set()
        for r in range(REQUESTS):
            if r % 2:
                response = await http.post("/v1/memories", json={"text": f"fact {c}.{r}", "user_id": user})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    acknowledged[user] |= {m["id"] for m in response.json()["results"]}
                continue
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"remember {c}.{r}"}],
                "max_tokens": 4,
                "user": user,
                "memory": {"write": True},
                "stream": r % 4 == 0,
            }
            if body["stream"]:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    statuses.append(response.status_code)
                    events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
                final = json.loads(events[-1][len("data: ") :])
                acknowledged[user] |= set(final["memory"]["written"])
            else:
                response = await http.post("/v1/chat/completions", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    acknowledged[user] |= set(response.json()["memory"]["written"])

    async def run(url: str) -> tuple[dict[str, set[str]], list[int]]:
        acknowledged: dict[str, set[str]] = {}
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            work = asyncio.gather(*[client(http, c, acknowledged, statuses) for c in range(CLIENTS)])
            await asyncio.wait_for(work, timeout=120)
        return acknowledged, statuses

    with running_server(tmp_path) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        acknowledged, statuses = asyncio.run(run(url))
        assert len(statuses) == CLIENTS * REQUESTS
        assert not [s for s in statuses if s >= 500]
        assert statuses.count(200) == len(statuses)
        for user, ids in acknowledged.items():
            listed = http.get("/v1/memories", params={"user_id": user, "limit": 1000}).json()
            assert ids and ids <= {m["id"] for m in listed["results"]}, user
            assert len(ids) == REQUESTS  # one memory per request: a chat writes its exchange


def test_sigterm_drains_the_reply_in_flight_then_exits_with_the_write_stored(tmp_path):
    store, port = tmp_path / "store", free_port()
    command = [sys.executable, "-m", "latentmem.cli", "serve", "--model", MODEL, "--store", str(store)]
    command += ["--embedder", EMBEDDER, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, url)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "a long story"}],
            "max_tokens": 300,
            "user": "zoe",
            "memory": {"write": True},
            "stream": True,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            next(lines)  # decoding has started
            server.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        written = json.loads(rest[-2][len("data: ") :])["memory"]["written"]
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    memory = VectorMemory.open(store, embedder=EMBEDDER)
    try:
        assert [str(r.id) for r in memory.list(user="zoe")] == written
    finally:
        memory.close()


def test_finished_event_reports_why(backends):
    batching, _ = backends

    async def run():
        return [e async for e in batching.stream(_request(batching, "two", 2))]

    events = asyncio.run(run())
    assert events[-1] == Finished("length") and sum(len(e.ids) for e in events[:-1]) == 2


# ---- MemGen weavers: static batching ------------------------------------------------------------------


@pytest.fixture(scope="module")
def weaver_backends(tmp_path_factory):
    # Letters as delimiters: the random tiny model then inserts latents while it decodes.
    directory = tmp_path_factory.mktemp("weaver") / "weaver"
    weaver = {"weaver": save_weaver(directory, delimiters=("e", "o", "s", "t"), max_inference_insertions=8)}
    batching = BatchingBackend.load(MODEL, memgen=weaver, max_batch=8, max_queue=3)
    alone = InProcessBackend.load(MODEL, memgen=weaver)
    yield batching, alone
    batching.close()
    alone.close()


async def _events(backend, request: GenerationRequest) -> tuple[list[int], Finished]:
    tokens = []
    async for event in backend.stream(request):
        if isinstance(event, Tokens):
            tokens += event.ids
        else:
            return tokens, event
    raise AssertionError("no Finished event")


def _weaver_requests(backend, n_tokens, memories) -> list[GenerationRequest]:
    """Greedy weaver requests; `memories[i]` memory vectors (32-dim) for row i (0: none)."""
    rng = np.random.default_rng(0)
    out = []
    for prompt, n, m in zip(PROMPTS, n_tokens, memories, strict=True):
        ids = backend.get("weaver").tokenizer(prompt)["input_ids"]
        vectors = rng.standard_normal((m, 32)).astype(np.float32) if m else None
        out.append(GenerationRequest("weaver", prompt, ids, n, memory_vectors=vectors))
    return out


def test_a_gated_weaver_reports_no_latents_for_a_prompt_it_turned_away(tmp_path):
    """The weaver's prompt gate serves PROMPTS[2] only: PROMPTS[3] is answered as the plain model answers
    it, and its reply reports no insertion."""
    import torch

    from latentmem.memgen import LatentMemoryModel
    from latentmem.memgen.generate import prompt_gate_features

    directory = save_weaver(tmp_path / "weaver", delimiters=("e", "o", "s", "t"), trigger={"prompt": "knn"})
    mm = LatentMemoryModel.from_pretrained(directory, MODEL)
    ids = mm.tokenizer(PROMPTS[2])["input_ids"]
    feats = prompt_gate_features(mm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    mm.prompt_gate.bank, mm.prompt_gate.threshold = feats.repeat(5, 1), torch.tensor(1e-5)
    mm.save_pretrained(directory)
    backend = InProcessBackend.load(MODEL, memgen={"weaver": directory})
    try:

        async def run():
            served, away = _weaver_requests(backend, [12] * 6, [0] * 6)[2:4]
            plain = _request(backend, PROMPTS[3], 12)
            return await _events(backend, served), await _events(backend, away), await _tokens(backend, plain)

        (_, served), (tokens, away), plain = asyncio.run(run())
    finally:
        backend.close()
    assert served.insertions[0].after_token == -1 and away.insertions == ()
    assert tokens == plain


def test_weaver_requests_waiting_together_are_one_generate_call_and_read_as_alone(weaver_backends):
    batching, alone = weaver_backends
    lengths, memories = [5 + 4 * i for i in range(len(PROMPTS))], [0, 1, 0, 3, 2, 0]

    async def run():
        one_by_one = [await _events(alone, r) for r in _weaver_requests(alone, lengths, memories)]
        requests = _weaver_requests(batching, lengths, memories)
        together = await asyncio.gather(*[_events(batching, r) for r in requests])
        return one_by_one, list(together)

    one_by_one, together = asyncio.run(run())
    assert together == one_by_one
    assert len({len(tokens) for tokens, _ in together}) > 1  # rows of different lengths
    assert any(len(f.insertions) > 1 for _, f in together)  # latents inserted while decoding too
    (load,) = [load for load in batching.load_now() if load.model == "weaver"]
    # The first request may start alone; the rest waited for it and decoded in one call.
    assert load.rows == len(PROMPTS) and load.batches <= 2 and (load.decoding, load.waiting) == (0, 0)


def test_weaver_admission_beyond_the_batch_and_queue_is_refused(weaver_backends):
    batching, _ = weaver_backends

    async def run():
        requests = _weaver_requests(batching, [4] * 6, [0] * 6) * 2  # 12 > max_batch 8 + max_queue 3
        streams = [batching.stream(r) for r in requests[:11]]  # admitted at once, before any is read
        with pytest.raises(ServerBusyError) as refused:
            batching.stream(requests[11])
        for stream in streams:
            await stream.aclose()
        return refused.value

    refused = asyncio.run(run())
    assert refused.status == 429 and refused.headers() == {"Retry-After": "1"}


# ---- recall memories: static batching ------------------------------------------------------------------


def test_recall_requests_waiting_together_are_one_call_and_read_as_alone(tmp_path):
    recall = {"recaller": save_recall(tmp_path / "recall", ["the sky is green", "tea is cold", "owls bark"])}
    alone = InProcessBackend.load(MODEL, recall=recall)
    batching = BatchingBackend.load(MODEL, recall=recall, max_batch=8, max_queue=3)
    # `<recall>` ending a prompt makes the reply start with a recall; the others recall only if they emit it
    prompts = [p + ("<recall>" if i % 2 else "") for i, p in enumerate(PROMPTS)]

    def requests(backend):
        tok = backend.get("recaller").tokenizer
        return [
            GenerationRequest("recaller", p, tok(p)["input_ids"], 4 + 3 * i) for i, p in enumerate(prompts)
        ]

    async def run():
        one_by_one = [await _events(alone, r) for r in requests(alone)]
        together = await asyncio.gather(*[_events(batching, r) for r in requests(batching)])
        return one_by_one, list(together)

    try:
        one_by_one, together = asyncio.run(run())
        (load,) = [load for load in batching.load_now() if load.model == "recaller"]
    finally:
        batching.close()
        alone.close()
    assert together == one_by_one
    assert sum(1 for _, f in together if f.recalls) >= len(PROMPTS) // 2  # recalls happened, and match
    assert len({len(tokens) for tokens, _ in together}) > 1  # rows cut to their own lengths
    # The first request may start alone; the rest waited for it and decoded in one call.
    assert load.rows == len(PROMPTS) and load.batches <= 2
