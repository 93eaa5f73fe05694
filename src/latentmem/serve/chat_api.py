"""`POST /v1/chat/completions` and `GET /v1/models`: OpenAI's chat API, with memory as an extension.

A request's `memory` field (`{"retrieve": 3, "session": "s1", "write": true}`) adds, in the caller's
scope (`auth.Principal.scope`):

- retrieve: the `retrieve` stored memories most similar to the last user message go into the system
  message as text, or, for a MemGen weaver that reads memory vectors of the store's dimension, to the
  weaver as vectors;
- session: the conversation is kept here; the client sends only its new messages and the model sees the
  session's recent turns (a `LastTurns` window) before them;
- write: the exchange (the last user message and the reply) is stored as a memory.

The same options can come as headers (`X-Memory-Retrieve`, `X-Memory-Session`, `X-Memory-Write`,
`X-Memory-Agent`; see `memory_options`), for clients that can set headers but not body fields.

The response's `memory` field says which memories were used and written, and where a weaver inserted
latents (or recall memory recalled). Stop sequences are applied here, on the decoded text, for every
backend alike; text that could be the start of a stop sequence is held back until it is known not to be.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations, which
# name dependencies (`Caller`) defined in the router factory's scope.
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.memory.base import Scope
from latentmem.memory.conversation import ConversationMemory, LastTurns
from latentmem.sampling import SamplingConfig
from latentmem.serve.auth import Authenticator, Principal
from latentmem.serve.backend import (
    Finished,
    GenerationBackend,
    GenerationEvent,
    GenerationRequest,
    ServedModel,
    Tokens,
)
from latentmem.serve.errors import (
    ContextLengthError,
    InvalidParameterError,
    ShapedErrorsRoute,
    as_serve_error,
    error_body,
)
from latentmem.serve.metrics import Metrics
from latentmem.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Insertion,
    MemoryOptions,
    MemoryReport,
    ModelCard,
    ModelList,
    Recall,
    Usage,
)
from latentmem.serve.stores import Stores
from latentmem.serve.ui import ChatRecord, RecentChats


class StopScanner:
    """Incremental detokenisation with stop sequences: `push` token ids, get the text now safe to send.

    Each push decodes only a window of the newest ids (as vLLM's incremental detokeniser does): the text
    of `ids[prefix:]` minus that of `ids[prefix:read]`, where `prefix..read` are the ids of the previous
    window, which give the new ones their context (a SentencePiece word's leading space, a clean-up across
    the boundary). Decoding every id at every push instead costs O(n) per token, O(n^2) per reply.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""  # the final text so far (cut at a stop sequence once one is found)
        self.sent = 0
        self.stopped = False
        self._prefix = self._read = 0  # the decoding window: ids[prefix:read] are decoded already

    def push(self, ids: list[int]) -> str:
        if self.stopped:
            return ""
        self.ids += ids
        return self._scan(self.text + self._new_text())

    def flush(self) -> str:
        """The rest of the text, once generation has ended (an unfinished character as U+FFFD)."""
        out = "" if self.stopped else self._scan(self.text + self._new_text(final=True))
        return out + self._release(len(self.text))

    def _scan(self, text: str) -> str:
        """Take `text` as the text so far: cut it at a stop sequence, release what is safe to send."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            self.text = text[: min(found)]
            return self._release(len(self.text))
        self.text = text
        # Hold back a tail that may still become a stop sequence.
        hold = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        return self._release(len(text) - hold)

    def _new_text(self, final: bool = False) -> str:
        """The text the ids since the last window add; "" while they end inside a character (a byte
        sequence decoded as U+FFFD until its last byte arrives) unless `final`: the next push completes it."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if not final and (after.endswith("\ufffd") or len(after) < len(before)):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : end], end
        return out


# The `memory` field's options as headers (HTTP header names are case-insensitive).
MEMORY_HEADERS = {
    "retrieve": "X-Memory-Retrieve",
    "session": "X-Memory-Session",
    "write": "X-Memory-Write",
    "agent": "X-Memory-Agent",
}


def memory_options(field: MemoryOptions | None, headers: Mapping[str, str]) -> MemoryOptions:
    """A request's memory options: its `memory` field and its `X-Memory-*` headers together.

    Headers are validated like the field (a bad value is a 422 naming the header; `X-Memory-Write`
    takes true/false, 1/0, yes/no). An option given both ways must have the same value, else 422 naming
    the header: neither a client's default headers nor one request's body silently overrides the other.
    """
    given = {name: headers[header] for name, header in MEMORY_HEADERS.items() if header in headers}
    if not given:
        return field or MemoryOptions()
    try:
        from_headers = MemoryOptions.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        header = MEMORY_HEADERS[str(error["loc"][0])]
        raise InvalidParameterError(f"{header}: {error['msg']}", param=header, code=error["type"]) from None
    if field is None:
        return from_headers
    for name in given:
        ours, theirs = getattr(from_headers, name), getattr(field, name)
        if name in field.model_fields_set and ours != theirs:
            raise InvalidParameterError(
                f"{MEMORY_HEADERS[name]}: {ours!r} differs from the body's memory.{name} {theirs!r}; give "
                "one, or the same value in both",
                param=MEMORY_HEADERS[name],
                code="conflicting_value",
            )
    return field.model_copy(update={name: getattr(from_headers, name) for name in given})


def _sampling(body: ChatCompletionRequest) -> SamplingConfig:
    # OpenAI's temperature 0 is greedy decoding; top_p applies only when sampling, as in OpenAI's API.
    if body.temperature == 0:
        return SamplingConfig(do_sample=False)
    return SamplingConfig(do_sample=True, temperature=body.temperature, top_p=body.top_p)


def _session_key(scope: Scope, session: str) -> str:
    # Sessions are per tenant: two users' "s1" are different conversations.
    return json.dumps([scope.user, scope.agent, session])


class _Exchange:
    """One chat request from the prompt to what is stored after the reply."""

    def __init__(
        self, body: ChatCompletionRequest, options: MemoryOptions, served: ServedModel, scope: Scope | None
    ) -> None:
        self.body, self.options, self.served, self.scope = body, options, served, scope
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.new_messages = [m for m in body.messages if m.template_role() != "system"]
        users = [m for m in body.messages if m.role == "user" and m.text().strip()]
        self.query = users[-1].text() if users else None
        self.report = MemoryReport(session=self.options.session)
        self.finish_reason: str = "stop"  # set, with usage, when generation ends
        self.usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def conversation(self, stores: Stores, turns: int) -> ConversationMemory | None:
        if self.options.session is None:
            return None
        key = _session_key(self.scope, self.options.session)
        return ConversationMemory(stores.conversations, key, LastTurns(turns))


def chat_router(
    backend: GenerationBackend,
    stores: Stores,
    auth: Authenticator,
    metrics: Metrics,
    *,
    default_max_tokens: int,
    session_turns: int,
    recent: RecentChats,
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["chat"], route_class=ShapedErrorsRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.get("/models", response_model=ModelList)
    async def models(principal: Caller) -> ModelList:
        return ModelList(
            data=[
                ModelCard(id=m.name, created=m.created, kind=m.kind, context_length=m.context_length)
                for m in backend.models()
            ]
        )

    async def prepare(exchange: _Exchange) -> GenerationRequest:
        """Build the prompt (memories, session turns, the new messages) and check that it fits."""
        body, served, options = exchange.body, exchange.served, exchange.options
        system = [m.text() for m in body.messages if m.template_role() == "system"]
        vectors = None
        if options.retrieve and exchange.query is not None:
            found = await stores.run(
                stores.memory.retrieve, exchange.query, exchange.scope, k=options.retrieve
            )
            exchange.report.used = [str(i) for i in found.ids]
            metrics.memories.labels("retrieved").inc(len(found.ids))
            if found.ids and served.memory_dim is not None and served.memory_dim == stores.memory.dim:
                vectors = found.vectors
            elif found.ids:
                system.append("Relevant memories:\n" + "\n".join(f"- {t}" for t in found.texts))
        conversation = exchange.conversation(stores, session_turns)
        past = [] if conversation is None else await stores.run(conversation.to_messages)
        messages = [{"role": "system", "content": "\n\n".join(system)}] if system else []
        messages += past + [{"role": m.template_role(), "content": m.text()} for m in exchange.new_messages]
        tokenizer = served.tokenizer
        prompt = render_chat(tokenizer, messages)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = served.context_length - served.extra_slots - len(prompt_ids)
        asked = body.token_limit()
        if room < (asked or 1):
            kept = f" ({served.extra_slots} of them kept for latents)" if served.extra_slots else ""
            raise ContextLengthError(
                f"This model's maximum context length is {served.context_length} tokens{kept}. However, "
                f"you requested {len(prompt_ids) + (asked or 1) + served.extra_slots} tokens "
                f"({len(prompt_ids)} in the messages, {asked or 1} for the completion). Please reduce the "
                "length of the messages or completion.",
                param="messages",
            )
        return GenerationRequest(
            model=body.model,
            prompt=prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=asked or min(default_max_tokens, room),
            sampling=_sampling(body),
            seed=body.seed,
            memory_vectors=vectors,
        )

    async def deltas(
        exchange: _Exchange,
        request: GenerationRequest,
        stream: AsyncIterator[GenerationEvent],
        scanner: StopScanner,
    ) -> AsyncIterator[str]:
        """The reply's text (from the backend's `stream` for `request`) as it becomes final; fills
        `exchange` with usage and finish reason."""
        finished = Finished("stop")
        generated = 0
        try:
            async for event in stream:
                if isinstance(event, Tokens):
                    generated += len(event.ids)
                    text = scanner.push(event.ids)
                    if scanner.stopped:  # keep reading: the backend ends soon and reports what it did
                        request.cancel.set()
                    if text:
                        yield text
                else:
                    finished = event
        finally:
            await stream.aclose()
        if rest := scanner.flush():
            yield rest
        exchange.finish_reason = "stop" if scanner.stopped else finished.reason
        exchange.usage = Usage(
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=generated,
            total_tokens=len(request.prompt_ids) + generated,
        )
        exchange.report.insertions = [
            Insertion(after_token=i.after_token, latents=i.latents) for i in finished.insertions
        ]
        exchange.report.recalls = [
            Recall(at_token=r.at_token, bank_id=r.bank_id, text=r.text) for r in finished.recalls
        ]
        name = exchange.served.name
        metrics.tokens.labels(name, "prompt").inc(len(request.prompt_ids))
        metrics.tokens.labels(name, "completion").inc(generated)
        metrics.insertions.labels(name).inc(len(finished.insertions))

    async def remember(exchange: _Exchange, reply: str) -> None:
        """Keep the session's turns and write the exchange as a memory, as the request asked."""
        conversation = exchange.conversation(stores, session_turns)
        if conversation is not None:

            def append() -> None:
                for message in exchange.new_messages:
                    conversation.add(message.template_role(), message.text())
                conversation.add("assistant", reply)

            await stores.run(append)
        if exchange.options.write and exchange.query is not None:
            metadata = {"source": "chat", "model": exchange.body.model}
            if exchange.options.session is not None:
                metadata["session"] = exchange.options.session
            result = await stores.run(
                stores.memory.add,
                f"user: {exchange.query}\nassistant: {reply}",
                exchange.scope,
                metadata=metadata,
            )
            exchange.report.written = [str(result.id)]
            metrics.memories.labels("written").inc()

    async def conclude(exchange: _Exchange, reply: str) -> None:
        """After the reply: `remember` it, and keep the exchange for the inspector page (`/ui`)."""
        await remember(exchange, reply)
        report = exchange.report
        recent.add(
            ChatRecord(
                id=exchange.id,
                created=exchange.created,
                model=exchange.body.model,
                scope=exchange.scope,
                query=exchange.query,
                reply=reply,
                used=tuple(report.used),
                written=tuple(report.written),
                insertions=tuple((i.after_token, i.latents) for i in report.insertions),
                recalls=tuple((r.at_token, r.bank_id, r.text) for r in report.recalls),
            )
        )

    @router.post("/chat/completions", response_model=ChatCompletion)
    async def chat_completions(body: ChatCompletionRequest, principal: Caller, http: Request):
        served = backend.get(body.model)
        options = memory_options(body.memory, http.headers)
        # No session in the scope: memories belong to the user and agent, so that a fact learnt in one
        # session is recalled in the next (the session is kept in the memory's metadata).
        scope = principal.scope(body.user, options.agent, None)
        if (options.retrieve or options.session or options.write) and scope is None:
            raise InvalidParameterError(
                "memory needs a scope: send `user` (or use a key bound to one)", param="user"
            )
        exchange = _Exchange(body, options, served, scope)
        request = await prepare(exchange)
        scanner = StopScanner(served.tokenizer, body.stop_sequences())
        # Asked for here, before any response starts: a backend that is full refuses now (429), which a
        # stream could only report inside a 200.
        stream = backend.stream(request)
        if not body.stream:
            reply = "".join([text async for text in deltas(exchange, request, stream, scanner)])
            await conclude(exchange, reply)
            return ChatCompletion(
                id=exchange.id,
                created=exchange.created,
                model=body.model,
                choices=[
                    Choice(message=AssistantMessage(content=reply), finish_reason=exchange.finish_reason)
                ],
                usage=exchange.usage,
                memory=exchange.report,
            )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(exchange, deltas(exchange, request, stream, scanner), conclude, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


def _chunk(exchange: _Exchange, delta: dict, finish_reason: str | None = None, **extra) -> str:
    """One SSE event in OpenAI's chunk shape."""
    chunk = {
        "id": exchange.id,
        "object": "chat.completion.chunk",
        "created": exchange.created,
        "model": exchange.body.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        **extra,
    }
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


async def _sse(
    exchange: _Exchange, texts: AsyncIterator[str], remember, include_usage: bool
) -> AsyncIterator[str]:
    yield _chunk(exchange, {"role": "assistant", "content": ""})
    parts = []
    try:
        async for text in texts:
            parts.append(text)
            yield _chunk(exchange, {"content": text})
        await remember(exchange, "".join(parts))
    except Exception as exc:
        # The status line is sent already: report the failure as an error event, as OpenAI's API does.
        error = as_serve_error(exc)
        body = error_body(error.message, error.type, error.param, error.code)
        yield f"data: {json.dumps(body)}\n\n"
        return
    yield _chunk(exchange, {}, exchange.finish_reason, memory=exchange.report.model_dump())
    if include_usage:
        usage = {
            "id": exchange.id,
            "object": "chat.completion.chunk",
            "created": exchange.created,
            "model": exchange.body.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": exchange.usage.model_dump(),
        }
        yield f"data: {json.dumps(usage, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"
