"""The server end to end: a real uvicorn server over tiny-qwen2 and a tiny MemGen weaver, driven by the
official `openai` client (chat, streaming) and `httpx` (memory API, errors)."""

import re

import httpx
import openai
import pytest

from serve_fixtures import running_server, save_weaver

MAX_BODY = 20_000
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    weaver = save_weaver(tmp / "weaver")
    with running_server(tmp, weaver=weaver, max_body_bytes=MAX_BODY, default_max_tokens=8) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused-on-an-open-server", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ---- chat ------------------------------------------------------------------------------------------


def test_models_and_health(client, http):
    assert [m.id for m in client.models.list().data] == ["tiny-qwen2", "weaver"]
    health = http.get("/healthz").json()
    assert health == {"status": "ok", "models": ["tiny-qwen2", "weaver"], "auth": "open"}


def test_chat_completion_shape_usage_and_length(client):
    out = client.chat.completions.create(model="tiny-qwen2", messages=HELLO, max_tokens=6, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason == "length"  # a random tiny model does not stop by itself in 6
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6 and out.usage.prompt_tokens > 3


def test_streaming_matches_the_plain_reply(client):
    whole = client.chat.completions.create(model="tiny-qwen2", messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny-qwen2",
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_raw_sse_lines_end_with_done(http):
    body = {"model": "tiny-qwen2", "messages": HELLO, "max_tokens": 3, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_stop_sequence_cuts_the_reply(client):
    full = client.chat.completions.create(model="tiny-qwen2", messages=HELLO, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    cut = client.chat.completions.create(
        model="tiny-qwen2", messages=HELLO, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]


def test_seed_makes_sampling_repeatable(client):
    def sample(seed):
        out = client.chat.completions.create(
            model="tiny-qwen2", messages=HELLO, max_tokens=8, temperature=1.0, top_p=0.9, seed=seed
        )
        return out.choices[0].message.content

    assert sample(7) == sample(7)


def test_weaver_reports_latents_and_reads_memory_vectors(client, http):
    added = http.post("/v1/memories", json={"text": "Dana keeps bees", "user_id": "dana"}).json()
    memory_id = added["results"][0]["id"]
    out = client.chat.completions.create(
        model="weaver",
        messages=[{"role": "user", "content": "what does Dana keep?"}],
        max_tokens=6,
        temperature=0,
        user="dana",
        extra_body={"memory": {"retrieve": 2}},
    )
    report = out.model_extra["memory"]
    assert report["used"] == [memory_id]
    assert report["insertions"][0] == {"after_token": -1, "latents": 2}
    assert all(0 <= i["after_token"] < 6 for i in report["insertions"][1:])
    # The weaver reads the memory as a vector: the prompt holds no memory text.
    bare = client.chat.completions.create(
        model="weaver", messages=[{"role": "user", "content": "what does Dana keep?"}], max_tokens=1
    )
    assert out.usage.prompt_tokens == bare.usage.prompt_tokens


def test_memory_in_the_prompt_session_and_write(client, http):
    http.post("/v1/memories", json={"text": "Erin is allergic to peanuts", "user_id": "erin"})
    ask = [{"role": "user", "content": "what is Erin allergic to?"}]
    plain = client.chat.completions.create(model="tiny-qwen2", messages=ask, max_tokens=2, temperature=0)
    with_memory = client.chat.completions.create(
        model="tiny-qwen2",
        messages=ask,
        max_tokens=2,
        temperature=0,
        user="erin",
        extra_body={"memory": {"retrieve": 1, "session": "s1", "write": True}},
    )
    report = with_memory.model_extra["memory"]
    assert len(report["used"]) == 1 and report["session"] == "s1" and len(report["written"]) == 1
    assert with_memory.usage.prompt_tokens > plain.usage.prompt_tokens  # the memory text is in the prompt
    written = http.get(f"/v1/memories/{report['written'][0]}").json()
    assert written["user_id"] == "erin" and written["memory"].startswith("user: what is Erin allergic to?")
    assert written["metadata"]["session"] == "s1"
    # The next request of the session sends only its new message; the model still sees the first turns.
    follow = [{"role": "user", "content": "and?"}]
    alone = client.chat.completions.create(model="tiny-qwen2", messages=follow, max_tokens=1, user="erin")
    in_session = client.chat.completions.create(
        model="tiny-qwen2",
        messages=follow,
        max_tokens=1,
        user="erin",
        extra_body={"memory": {"session": "s1"}},
    )
    assert in_session.usage.prompt_tokens > alone.usage.prompt_tokens + 8


def test_memory_options_as_headers(client, http):
    http.post("/v1/memories", json={"text": "Lea collects stamps", "user_id": "lea"})
    ask = [{"role": "user", "content": "what does Lea collect?"}]
    headers = {"X-Memory-Retrieve": "1", "X-Memory-Session": "h1", "X-Memory-Write": "true"}
    out = client.chat.completions.create(
        model="tiny-qwen2", messages=ask, max_tokens=2, user="lea", extra_headers=headers
    )
    report = out.model_extra["memory"]
    assert len(report["used"]) == 1 and report["session"] == "h1" and len(report["written"]) == 1
    # Header and body together: they merge, and an option given both ways must agree.
    agreeing = client.chat.completions.create(
        model="tiny-qwen2",
        messages=ask,
        max_tokens=1,
        user="lea",
        extra_headers={"X-Memory-Session": "h1", "x-memory-write": "0"},
        extra_body={"memory": {"session": "h1", "retrieve": 1}},
    )
    report = agreeing.model_extra["memory"]
    assert len(report["used"]) == 1 and report["session"] == "h1" and report["written"] == []


@pytest.mark.parametrize(
    ("headers", "body_memory", "param"),
    [
        ({"X-Memory-Retrieve": "three"}, None, "X-Memory-Retrieve"),
        ({"X-Memory-Retrieve": "-1"}, None, "X-Memory-Retrieve"),
        ({"X-Memory-Write": "maybe"}, None, "X-Memory-Write"),
        ({"X-Memory-Session": ""}, None, "X-Memory-Session"),
        ({"X-Memory-Session": "a"}, {"session": "b"}, "X-Memory-Session"),
    ],
)
def test_a_bad_or_conflicting_memory_header_is_422_naming_it(client, headers, body_memory, param):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(
            model="tiny-qwen2",
            messages=HELLO,
            max_tokens=1,
            user="lea",
            extra_headers=headers,
            extra_body={"memory": body_memory} if body_memory else None,
        )
    assert caught.value.body["param"] == param and param in caught.value.body["message"]


# ---- errors ----------------------------------------------------------------------------------------


def test_malformed_json_is_400(http):
    error = _error(
        http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    assert error["type"] == "invalid_request_error"
    _error(http.post("/v1/chat/completions", json=["a", "list"]), 400)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


def test_prompt_longer_than_the_context_is_400_naming_the_limit(http):
    long = [{"role": "user", "content": "memory recall " * 700}]  # > 1024 tokens, < MAX_BODY bytes
    error = _error(http.post("/v1/chat/completions", json={"model": "tiny-qwen2", "messages": long}), 400)
    assert error["code"] == "context_length_exceeded" and "1024" in error["message"]
    asked = {"model": "tiny-qwen2", "messages": HELLO, "max_tokens": 2000}
    assert "1024" in _error(http.post("/v1/chat/completions", json=asked), 400)["message"]


def test_body_over_the_limit_is_413(http):
    big = [{"role": "user", "content": "x" * (MAX_BODY + 10)}]
    error = _error(http.post("/v1/chat/completions", json={"model": "tiny-qwen2", "messages": big}), 413)
    assert str(MAX_BODY) in error["message"]

    def chunked():  # no Content-Length: counted while read
        for _ in range(30):
            yield b" " * 1000

    _error(http.post("/v1/memories", content=chunked(), headers={"content-type": "application/json"}), 413)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"memory": {"retrieve": -1}}, "memory.retrieve"),
        ({"n": 2}, "n"),
    ],
)
def test_invalid_parameters_are_422_naming_the_field(http, change, param):
    body = {"model": "tiny-qwen2", "messages": HELLO, **change}
    assert _error(http.post("/v1/chat/completions", json=body), 422)["param"] == param


def test_memory_without_a_user_is_422(http):
    body = {"model": "tiny-qwen2", "messages": HELLO, "memory": {"retrieve": 2}}
    assert _error(http.post("/v1/chat/completions", json=body), 422)["param"] == "user"


# ---- memory API ------------------------------------------------------------------------------------


def test_add_get_update_history_delete(http):
    added = http.post(
        "/v1/memories", json={"text": "Fay lives in Oslo", "user_id": "fay", "metadata": {"topic": "home"}}
    ).json()["results"]
    assert [r["event"] for r in added] == ["ADD"]
    memory_id = added[0]["id"]
    again = http.post("/v1/memories", json={"text": "fay lives in  oslo", "user_id": "fay"}).json()["results"]
    assert again[0]["event"] == "NONE" and again[0]["id"] == memory_id
    assert http.get(f"/v1/memories/{memory_id}").json()["memory"] == "Fay lives in Oslo"
    http.put(f"/v1/memories/{memory_id}", json={"text": "Fay lives in Bergen"}).raise_for_status()
    updated = http.put(f"/v1/memories/{memory_id}", json={"metadata": {"topic": "moved"}}).json()
    assert updated["memory"] == "Fay lives in Bergen" and updated["metadata"] == {"topic": "moved"}
    history = http.get(f"/v1/memories/{memory_id}/history").json()["results"]
    assert [(v["version"], v["memory"], v["metadata"]) for v in history] == [
        (0, "Fay lives in Oslo", {"topic": "home"}),
        (1, "Fay lives in Bergen", {"topic": "home"}),
        (2, "Fay lives in Bergen", {"topic": "moved"}),
    ]
    assert [v["replaced_at"] is None for v in history] == [False, False, True]
    assert http.delete(f"/v1/memories/{memory_id}").json()["deleted"] == 1
    for path in (f"/v1/memories/{memory_id}", f"/v1/memories/{memory_id}/history", "/v1/memories/abc"):
        _error(http.get(path), 404)
    _error(http.delete(f"/v1/memories/{memory_id}"), 404)


def test_add_messages_search_and_filters(http):
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "Gus plays the cello"},
        {"role": "assistant", "content": "Gus practises every morning"},
    ]
    added = http.post("/v1/memories", json={"messages": messages, "user_id": "gus"}).json()["results"]
    assert [r["metadata"]["role"] for r in added] == ["user", "assistant"]
    hits = http.post(
        "/v1/memories/search", json={"query": "Gus plays the cello", "user_id": "gus", "k": 1}
    ).json()
    assert [h["memory"] for h in hits["results"]] == ["Gus plays the cello"] and hits["results"][0][
        "score"
    ] > 0.9
    filtered = http.post(
        "/v1/memories/search", json={"query": "cello", "user_id": "gus", "filters": {"role": "assistant"}}
    ).json()["results"]
    assert [h["memory"] for h in filtered] == ["Gus practises every morning"]
    _error(http.post("/v1/memories", json={"user_id": "gus"}), 422)
    _error(http.post("/v1/memories", json={"text": "no scope"}), 422)


def test_pagination_is_complete_and_stable(http):
    ids = [
        http.post("/v1/memories", json={"text": f"Hal fact number {i}", "user_id": "hal"}).json()["results"][
            0
        ]["id"]
        for i in range(7)
    ]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"user_id": "hal", "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = http.get("/v1/memories", params=params).json()
        seen += [m["id"] for m in page["results"]]
        pages += 1
        if pages == 1:  # a write while paging lands after the pages already read, never in them
            late = http.post("/v1/memories", json={"text": "Hal late fact", "user_id": "hal"}).json()
            ids.append(late["results"][0]["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    first = http.get("/v1/memories", params={"user_id": "hal", "limit": 3}).json()
    _error(http.get("/v1/memories", params={"user_id": "ida", "cursor": first["next_cursor"]}), 400)
    _error(http.get("/v1/memories", params={"user_id": "hal", "cursor": "garbage!"}), 400)
    _error(http.get("/v1/memories", params={"user_id": "hal", "limit": 0}), 422)


def test_scoped_delete_all(http):
    for text, agent in (("Ivy one", "a1"), ("Ivy two", "a1"), ("Ivy three", "a2")):
        http.post("/v1/memories", json={"text": text, "user_id": "ivy", "agent_id": agent})
    _error(http.delete("/v1/memories"), 422)  # never everything by accident
    assert http.delete("/v1/memories", params={"user_id": "ivy", "agent_id": "a1"}).json()["deleted"] == 2
    left = http.get("/v1/memories", params={"user_id": "ivy"}).json()["results"]
    assert [m["memory"] for m in left] == ["Ivy three"]


def test_metrics_in_prometheus_text(http, client):
    client.chat.completions.create(model="weaver", messages=HELLO, max_tokens=2)
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'latentmem_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert 'latentmem_request_seconds_bucket{le="0.005",route="/v1/memories/{memory_id}"}' in text
    assert 'latentmem_tokens_total{kind="completion",model="weaver"}' in text
    assert 'latentmem_latent_insertions_total{model="weaver"}' in text
    # The backend's load: weaver calls ran (batched or not), nothing decodes or waits now.
    assert 'latentmem_decoding{model="tiny-qwen2"} 0.0' in text
    assert 'latentmem_waiting{model="weaver"} 0.0' in text
    rows = re.search(r'latentmem_batch_rows_total\{model="weaver"\} (\d+)', text)
    assert rows and int(rows.group(1)) >= 1
