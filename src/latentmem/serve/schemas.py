"""Request and response bodies: OpenAI's chat shapes, mem0's memory shapes, and our extension fields.

Chat requests accept the fields OpenAI clients send and ignore the ones we do not implement (clients send
e.g. `frequency_penalty: 0` unasked); the ones we implement are checked, and a bad value is a 422 naming
the field. Extensions live under names OpenAI does not use: `memory` in the request and the response.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

# ---- chat ------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; `content` as a string or a list of text parts (images are not served)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def template_role(self) -> str:
        """The role chat templates know: OpenAI's `developer` messages are system messages."""
        return "system" if self.role == "developer" else self.role


class MemoryOptions(BaseModel):
    """The `memory` extension of a chat request.

    retrieve: how many memories of the caller's scope to retrieve for the last user message (0: none);
    session: keep the conversation server-side under this id (send only the new messages);
    write: store the exchange (the last user message and the reply) as a memory;
    agent: the agent scope to read and write (a key bound to an agent always uses its own).
    """

    model_config = ConfigDict(extra="forbid")

    retrieve: int = Field(0, ge=0, le=50)
    session: str | None = Field(None, min_length=1, max_length=256)
    write: bool = False
    agent: str | None = Field(None, min_length=1, max_length=256)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, min_length=1, max_length=256)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    memory: MemoryOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if (isinstance(value, list) and (len(value) > 4 or not all(value))) or value == "":
            raise ValueError("give at most 4 non-empty stop sequences")
        return value

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        """`max_completion_tokens` (OpenAI's newer name) or `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Insertion(BaseModel):
    """Latents a MemGen weaver inserted: after generated token `after_token` (-1: after the prompt)."""

    after_token: int
    latents: int


class Recall(BaseModel):
    """A memory that recall memory injected in the slot of generated token `at_token`, from its bank."""

    at_token: int
    bank_id: int
    text: str


class MemoryReport(BaseModel):
    """The `memory` extension of a response: what memory did for this reply."""

    used: list[str] = []  # ids of the stored memories retrieved into the prompt (or the weaver)
    written: list[str] = []  # ids of memories written from this exchange
    session: str | None = None
    insertions: list[Insertion] = []
    recalls: list[Recall] = []


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    memory: MemoryReport


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None
    memory: MemoryReport | None = None  # on the last chunk


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "latentmem"
    kind: Literal["reasoner", "memgen", "recall"]
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- memories (mem0's shape) -----------------------------------------------------------------------


class ScopeFields(BaseModel):
    """mem0's scope names: `user_id`, `agent_id`, `run_id` (a session)."""

    user_id: str | None = Field(None, min_length=1, max_length=256)
    agent_id: str | None = Field(None, min_length=1, max_length=256)
    run_id: str | None = Field(None, min_length=1, max_length=256)


class MemoryCreate(ScopeFields):
    """`text` (one memory) or `messages` (each user and assistant message one memory)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    messages: list[ChatMessage] | None = None
    metadata: dict[str, Any] | None = None


class MemoryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    metadata: dict[str, Any] | None = None


class MemorySearch(ScopeFields):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=100, validation_alias=AliasChoices("k", "limit"))
    filters: dict[str, str | int | float | bool | None] | None = None


class MemoryItem(BaseModel):
    id: str
    memory: str
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any]
    created_at: str  # ISO 8601, UTC
    updated_at: str


class AddedMemory(MemoryItem):
    event: Literal["ADD", "NONE"]  # NONE: a duplicate of the memory returned


class ScoredMemory(MemoryItem):
    score: float


class MemoryVersionItem(BaseModel):
    memory_id: str
    version: int
    memory: str
    metadata: dict[str, Any]
    updated_at: str
    replaced_at: str | None  # None: the current version


T = TypeVar("T")


class Results(BaseModel, Generic[T]):
    results: list[T]


class MemoryPage(BaseModel):
    results: list[MemoryItem]
    next_cursor: str | None  # pass as `cursor` for the next page; None on the last one


class Deleted(BaseModel):
    message: str
    deleted: int


# ---- keys --------------------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, min_length=1, max_length=256)
    agent: str | None = Field(None, min_length=1, max_length=256)
    admin: bool = False


class KeyInfo(BaseModel):
    id: str
    user: str | None
    agent: str | None
    admin: bool
    created_at: float
    revoked_at: float | None = None


class CreatedKey(KeyInfo):
    key: str  # shown once


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]
    auth: Literal["keys", "open"]
