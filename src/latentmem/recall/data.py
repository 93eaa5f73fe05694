"""Data for recall memory: a generated base of fictional facts, a general task, and the two training steps.

Facts are made of invented names, so no pretrained model knows them: answering right needs memory. Each
fact has a memory text ("The capital of Vorlani is Quessot."), a question, a paraphrased question (for a
held-out recall@1) and a short answer. `make_facts(n + k)[:n] == make_facts(n)`, so the k facts after the
first n are new memories of the same kind (set B, written after training on set A; at most
`NEW_FACT_RESERVE` of them); `auxiliary_facts` come after those, for training only (the memory head of
step 1, the decoding of step 2). The general task (real capitals and small sums, interleaved) is split
once by `split_general`: the first half is the step-2 training pool, the second half the held-out
retention probe, and both hold both kinds.

Step 2 samples (`MixedRecallData.epoch`), resampled every epoch under a token limit, in three kinds drawn
by the `mix` weights:

A memory fills `slots` consecutive `<|memory_pad|>` (m = 1 by default): one vector projected into m
input embeddings, so that a memory can carry more than one embedding's worth of text.

- `memory_front`: neutral filler text (`filler_context`: statements, never a question of the general
  task), then `<recall><|memory_pad|>` + memory text + `</recall>`: decoding a memory in a noisy context.
  The memory is random, so only the memory text and `</recall>` are supervised: labelling `<recall>`
  here would teach recalling after any context, and no head loss applies (the context asks for nothing);
- `memory_full`: a fact question, then the reply `<recall><|memory_pad|>` + memory text + `</recall>` +
  the answer: recall in the middle of a real answer, which then goes on. The only kind where `<recall>`
  is supervised and where the memory head learns (`Sample.trains_head`), since only here the memory is
  the one the context asks for;
- `sft_only`: the negatives: a general question of the training pool answered directly (the base
  model's own reply, no recall token in it), so the model learns when not to recall and keeps its
  ordinary ability. Its first reply token is labelled, at the very position where `memory_full` labels
  `<recall>`.

Labels: prompts are -100; `<|memory_pad|>` is -100 (its input is the injected memory, not a token to
predict); every other reply token is supervised, except `<recall>` in `memory_front`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.decoding import IGNORE
from latentmem.recall.errors import RecallError
from latentmem.recall.tokens import MEMORY_PAD, RECALL, RECALL_END, RECALL_TOKENS, RecallTokens

KINDS = ("memory_front", "memory_full", "sft_only")
# the kinds whose memory is the one their context asks for: the memory head learns only from these
HEAD_KINDS = frozenset({"memory_full"})

_SYLLABLES = "ka lo mi ra ve zu tor quen bri sal dor fen gil hax jun mor nep pil rus tav wex yal zor".split()
_COLOURS = "red blue green yellow purple orange white black silver golden".split()
_OBJECTS = "lantern compass kettle telescope loom clock bridge sail drum ladder".split()
_PLACES = "harbour market garden library workshop courtyard orchard station".split()

# memory_front filler: plain statements over the word lists above, so that a context never looks like a
# question (of the general task or about a fact) that should or should not be answered with a recall
_FILLER = (
    "The {colour} {object} stood in the {place}.",
    "Someone left a {object} near the {place}.",
    "It rained all morning over the {place}.",
    "A {colour} light shone on the {object}.",
    "The {place} was quiet after noon.",
    "Two travellers talked about a {object} in the {place}.",
)

# (memory text, question, paraphrase, answer) templates over a subject S and a value A
_TEMPLATES = (
    (
        "The capital of {S} is {A}.",
        "What is the capital of {S}?",
        "Which city is the capital of {S}?",
        "city",
    ),
    ("{S} invented the {A}.", "What did {S} invent?", "Which thing was invented by {S}?", "object"),
    (
        "The favourite colour of {S} is {A}.",
        "What is the favourite colour of {S}?",
        "Which colour does {S} like best?",
        "colour",
    ),
    ("{S} was founded in {A}.", "When was {S} founded?", "In which year was {S} founded?", "year"),
)

# A general task with checkable answers (real capitals, small sums): the retention probe and sft_only pool.
_CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Poland", "Warsaw"),
    ("China", "Beijing"),
    ("England", "London"),
    ("Canada", "Ottawa"),
)


@dataclass(frozen=True)
class Fact:
    text: str
    question: str
    paraphrase: str
    answer: str


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


def make_facts(n: int, seed: int = 0, *, syllables: tuple[int, int] = (2, 3)) -> list[Fact]:
    """`n` fictional facts with unique invented subjects of `syllables` (min, max) syllables, deterministic
    under `seed`. Two to three syllables give about 12,700 subjects; longer ones name distractors that no
    fact of the default stream has (`latentmem.recall.scale`)."""
    rng = random.Random(seed)
    subjects: set[str] = set()
    facts = []
    while len(facts) < n:
        subject = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(*syllables))).capitalize()
        if subject in subjects:
            continue
        subjects.add(subject)
        text, question, paraphrase, kind = _TEMPLATES[len(facts) % len(_TEMPLATES)]
        value = {
            "city": lambda: "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize(),
            "object": lambda: rng.choice(_OBJECTS),
            "colour": lambda: rng.choice(_COLOURS),
            "year": lambda: str(rng.randint(1100, 1990)),
        }[kind]()
        facts.append(
            Fact(
                text.format(S=subject, A=value),
                question.format(S=subject),
                paraphrase.format(S=subject),
                value,
            )
        )
    return facts


# facts after the trained ones kept for new memories (set B of the evaluation): `auxiliary_facts` start
# after them, so that nothing trained on is ever a "new" fact
NEW_FACT_RESERVE = 1000


def auxiliary_facts(n: int, num_facts: int, seed: int = 0) -> list[Fact]:
    """`n` facts of the same stream as the `num_facts` trained ones, after them and after the
    `NEW_FACT_RESERVE` kept for new memories: subjects (unique in a stream) that neither the bank nor any
    new fact holds, for training the head and the decoding on more than the bank's facts."""
    if not n:
        return []
    start = num_facts + NEW_FACT_RESERVE
    return make_facts(start + n, seed=seed)[start:]


def general_task(n: int, seed: int = 0) -> list[QA]:
    """`n` general questions with known answers: real capitals and small sums alternating (sums only once
    the 16 capitals are used), so that any prefix, and either half of one, holds both kinds."""
    rng = random.Random(seed)
    capitals = [QA(f"What is the capital of {c}?", a) for c, a in _CAPITALS]
    sums = [(a, b) for a in range(2, 30) for b in range(2, 30)]
    rng.shuffle(sums)
    plus = [QA(f"What is {a} plus {b}?", str(a + b)) for a, b in sums]
    pool = [q for pair in zip(capitals, plus, strict=False) for q in pair] + plus[len(capitals) :]
    return pool[:n]


def split_general(general: Sequence[QA]) -> tuple[list[QA], list[QA]]:
    """(training pool, held-out retention probe): the two halves of the general task, never mixed; with
    `general_task`'s interleaving both halves hold capitals and sums."""
    half = len(general) // 2
    return list(general[:half]), list(general[half:])


def filler_context(rng: random.Random) -> str:
    """One to three neutral statements drawn with `rng`: the random context of a `memory_front` sample."""
    words = {"colour": _COLOURS, "object": _OBJECTS, "place": _PLACES}
    return " ".join(
        rng.choice(_FILLER).format(**{k: rng.choice(v) for k, v in words.items()})
        for _ in range(rng.randint(1, 3))
    )


@dataclass
class Sample:
    """One tokenised training sequence: ids (T,), labels (T,), the memory index at its pad or -1, kind."""

    input_ids: list[int]
    labels: list[int]
    memory: int
    kind: str

    @property
    def trains_head(self) -> bool:
        """Whether the memory head learns at this sample's `<recall>` (see `HEAD_KINDS`)."""
        return self.kind in HEAD_KINDS


def memory_span(text: str, slots: int = 1) -> str:
    """`<recall>`, `slots` memory pads, the remembered `text` and `</recall>`: what a recall reads as."""
    return f"{RECALL}{MEMORY_PAD * slots}{text}{RECALL_END}"


def recall_reply(fact: Fact, slots: int = 1) -> str:
    """The reply a fact question should get: recall, the remembered text, then the answer."""
    return f"{memory_span(fact.text, slots)} The answer is {fact.answer}."


def encode_sample(
    tokenizer: PreTrainedTokenizerBase,
    tokens: RecallTokens,
    prompt: str,
    reply: str,
    memory: int,
    kind: str,
    *,
    label_recall: bool = True,
    slots: int = 1,
    allow: Sequence[str] = (),
) -> Sample:
    """Tokenise chat prompt + reply (+ EOS); labels on the reply only, the memory pads never labelled,
    `<recall>` labelled only when `label_recall`; `allow`: control tokens kept in the prompt
    (`render_chat`). A sample with a memory holds exactly `slots`
    consecutive pads right after its `<recall>`."""
    prompt_ids = tokenizer(render_chat(tokenizer, prompt, allow=allow), add_special_tokens=False).input_ids
    reply_ids = [*tokenizer(reply, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    unlabelled = {tokens.pad_id} if label_recall else {tokens.pad_id, tokens.recall_id}
    labels = [IGNORE] * len(prompt_ids) + [IGNORE if t in unlabelled else t for t in reply_ids]
    ids = prompt_ids + reply_ids
    want = slots if memory >= 0 else 0
    at = ids.index(tokens.pad_id) if want else 0
    if ids.count(tokens.pad_id) != want or ids[at : at + want] != [tokens.pad_id] * want:
        raise RecallError(
            f"a {kind} sample must hold {slots} consecutive {MEMORY_PAD} iff it has a memory, none "
            f"otherwise: {reply!r}"
        )
    return Sample(ids, labels, memory, kind)


class MixedRecallData:
    """The step-2 mixture, resampled each epoch under `max_tokens` (see the module docstring).

    Args:
        facts: the memories (index i <-> vector i of step 2: the bank's facts first, then any
            `step2.extra_facts`, which are decoded but never recalled).
        general: the sft_only pool (the training half of `split_general`, never the retention probe);
            `replies[i]` is the reply used for `general[i]` (e.g. the base model's own answer, so sft_only
            teaches the model to stay itself). A reply holding a recall token is a `RecallError`: it
            would teach recalling on the very questions that must be answered directly.
        mix: relative weights of memory_front, memory_full, sft_only.
        slots: memory pads per memory (`RecallMemory.slots`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        tokens: RecallTokens,
        facts: Sequence[Fact],
        general: Sequence[QA],
        replies: Sequence[str],
        *,
        samples_per_epoch: int,
        max_tokens: int,
        mix: Sequence[float] = (1.0, 1.0, 1.0),
        seed: int = 0,
        slots: int = 1,
    ) -> None:
        self.tokenizer, self.tokens = tokenizer, tokens
        if len(general) != len(replies):
            raise RecallError(f"{len(general)} general questions but {len(replies)} replies; pass one each")
        marked = [r for r in replies if any(t in r for t in RECALL_TOKENS)]
        if marked:
            raise RecallError(
                f"sft_only replies must not hold {', '.join(RECALL_TOKENS)} (they are the questions that "
                f"must not recall); strip them from {marked[0]!r}"
            )
        self.facts, self.general, self.replies = list(facts), list(general), list(replies)
        self.samples_per_epoch, self.max_tokens = samples_per_epoch, max_tokens
        self.mix, self.seed, self.slots = list(mix), seed, slots

    def _candidate(self, kind: str, rng: random.Random) -> Sample:
        if kind == "sft_only":
            i = rng.randrange(len(self.general))
            return encode_sample(
                self.tokenizer, self.tokens, self.general[i].question, self.replies[i], -1, kind
            )
        m = rng.randrange(len(self.facts))
        fact = self.facts[m]
        if kind == "memory_full":
            reply = recall_reply(fact, self.slots)
            return encode_sample(self.tokenizer, self.tokens, fact.question, reply, m, kind, slots=self.slots)
        # memory_front: filler that asks for nothing, then a random memory: learn to decode it, not to
        # call for it (see the module docstring)
        reply = memory_span(fact.text, self.slots)
        return encode_sample(
            self.tokenizer,
            self.tokens,
            filler_context(rng),
            reply,
            m,
            kind,
            label_recall=False,
            slots=self.slots,
        )

    def epoch(self, epoch: int) -> list[Sample]:
        """This epoch's samples: kinds drawn by `mix`, over-long candidates skipped and redrawn."""
        rng = random.Random(self.seed * 100_003 + epoch)
        kinds = rng.choices(KINDS, weights=self.mix, k=self.samples_per_epoch)
        out = []
        for kind in kinds:
            for _ in range(100):
                sample = self._candidate(kind, rng)
                if len(sample.input_ids) <= self.max_tokens:
                    out.append(sample)
                    break
            else:
                raise RecallError(
                    f"no {kind} sample fits max_tokens={self.max_tokens} in 100 draws; raise step2.max_tokens"
                )
        return out
