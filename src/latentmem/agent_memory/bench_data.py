"""A generated long-conversation benchmark in LongMemEval's schema, deterministic under a seed.

Each user talks to an assistant over four dated sessions. Facts are stated, restated, *changed* ("Big
news: I moved to Lyon!" after "I live in Porto"), *retracted* ("I sold my car") and asked about after the
last session, in five categories:

- single-fact: a slot stated once and never changed;
- updated-fact: a slot whose value changed (the gold answer is the latest value);
- multi-hop: two facts joined (where the user's employer is based);
- temporal: when a dated event happened;
- abstention: a retracted slot, or one never mentioned (gold "unknown").

Items follow `longmemeval_s.json` (question_id, question_type, question, answer, question_date,
haystack_dates, haystack_session_ids, haystack_sessions of {role, content, has_answer},
answer_session_ids); the questions of one user share the user's haystack. Abstention items end their
question_id in `_abs`, as LongMemEval's do. Fact-bearing user turns carry three extra keys the public
schema does not have: `fact` (the fact in the third person, what the manager receives, as a fact
extractor would give it; null on small talk), `slot` and `value` (value null for a retraction), from which the bench counts
stale and duplicate memories.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from latentmem.agent_memory.episodes import ABSTAIN

QUESTION_TYPES = {  # our category -> LongMemEval's question_type
    "single-fact": "single-session-user",
    "updated-fact": "knowledge-update",
    "multi-hop": "multi-session",
    "temporal": "temporal-reasoning",
    "abstention": "single-session-user",  # with the `_abs` suffix
}


@dataclass(frozen=True)
class Slot:
    """A changeable attribute: how a fact states it, how the user says it first and when it changes,
    how it is retracted (None: never), and the question that asks for it."""

    name: str
    fact: str
    first: str
    change: str
    question: str
    values: tuple[str, ...]
    retract_fact: str | None = None
    retract_turn: str | None = None


SLOTS = (
    Slot(
        "city", "The user lives in {v}.", "I live in {v}, it is a lovely place.",
        "Big news: I moved to {v} last month!", "Which city does the user live in?",
        ("Porto", "Lyon", "Oslo", "Kyoto", "Denver", "Dublin", "Quito", "Perth"),
    ),
    Slot(
        "job", "The user works as a {v}.", "I work as a {v}.", "I changed careers, I am now a {v}.",
        "What does the user work as?",
        ("nurse", "teacher", "pilot", "chef", "lawyer", "plumber", "baker", "dentist"),
    ),
    Slot(
        "pet", "The user has a pet {v}.", "I have a {v} at home.", "I adopted a {v}, our old pet went to my sister.",
        "What pet does the user have?", ("dog", "cat", "parrot", "rabbit", "hamster", "turtle"),
        "The user no longer has a pet.", "Sadly our pet passed away, we have no pets now.",
    ),
    Slot(
        "car", "The user drives a {v}.", "I drive a {v} to work.", "I traded my car in, I drive a {v} now.",
        "What car does the user drive?", ("Volvo", "Tesla", "Fiat", "Honda", "Jeep", "Skoda"),
        "The user no longer drives a car.", "I sold my car, I cycle everywhere now.",
    ),
    Slot(
        "instrument", "The user plays the {v}.", "I play the {v} in the evenings.",
        "I switched instruments, I play the {v} now.", "Which instrument does the user play?",
        ("guitar", "piano", "violin", "drums", "cello", "flute"),
        "The user no longer plays an instrument.", "I gave up music, I stopped playing completely.",
    ),
)  # fmt: skip
SLOT_QUESTIONS = {s.name: s.question for s in SLOTS}  # what manager training probes (`train.slot_probes`)
COMPANIES = ("Nimbus", "Corvid", "Halcyon", "Brightline", "Ostara", "Quillon")
HQ_CITIES = ("Berlin", "Madrid", "Toronto", "Nairobi", "Seoul", "Lisbon")
EVENTS = (  # (fact phrase, question phrase)
    ("ran a marathon", "run a marathon"),
    ("started a pottery class", "start a pottery class"),
    ("visited the Louvre", "visit the Louvre"),
    ("bought a tent", "buy a tent"),
)
NEVER_ASKED = ("What is the name of the user's sister?", "Which university did the user attend?")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September")
FILLER = ("Can you recommend a good book?", "What is a quick dinner idea?", "How do I stay focused?")
ACK, HELP = "Thanks for telling me, I will remember that.", "Happy to help with that."


class _User:
    """One user's sessions under construction: turns with their facts, and the answering turns."""

    def __init__(self, uid: str, rng: random.Random) -> None:
        self.uid, self.rng = uid, rng
        self.sessions: list[list[dict[str, Any]]] = []
        self.last: dict[str, tuple[str, int]] = {}  # evidence key -> (session id, turn index)

    def session_id(self, s: int) -> str:
        return f"{self.uid}_s{s}"

    def say(
        self, content: str, fact: str | None = None, slot: str | None = None, value: str | None = None
    ) -> str:
        """Append a user turn (and the assistant's reply); return its evidence key `session:index`."""
        turns = self.sessions[-1]
        turn: dict[str, Any] = {"role": "user", "content": content, "has_answer": False, "fact": fact}
        if fact is not None:
            turn.update(slot=slot, value=value)
        turns.append(turn)
        turns.append({"role": "assistant", "content": ACK if fact else HELP, "has_answer": False})
        return f"{self.session_id(len(self.sessions))}:{len(turns) - 2}"


def _user(uid: str, rng: random.Random) -> tuple[_User, list[dict[str, Any]]]:
    """One user's four sessions and its questions (without the haystack, added by the caller)."""
    u = _User(uid, rng)
    values = {s.name: rng.sample(s.values, 3) for s in SLOTS}
    retractable = [s for s in SLOTS if s.retract_fact]
    retracted = rng.choice(retractable)
    changed = [s for s in SLOTS if s is not retracted]
    rng.shuffle(changed)
    changed_once, changed_twice = changed[:2], changed[:1]  # changed[0] changes twice
    company, hq = rng.choice(COMPANIES), rng.choice(HQ_CITIES)
    event = rng.choice(EVENTS)
    date = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    evidence: dict[str, list[str]] = {}
    current: dict[str, str | None] = {}

    def state(slot: Slot, i: int, first: bool) -> None:
        v = values[slot.name][i]
        key = u.say((slot.first if first else slot.change).format(v=v), slot.fact.format(v=v), slot.name, v)
        evidence[slot.name], current[slot.name] = [key], v

    u.sessions.append([])  # session 1: everything stated once
    for slot in rng.sample(SLOTS, len(SLOTS)):
        state(slot, 0, True)
    evidence["employer"] = [
        u.say(f"I work at {company}.", f"The user works at {company}.", "employer", company)
    ]
    u.say(rng.choice(FILLER))
    u.sessions.append([])  # session 2: an event with a date, a restatement, small talk
    evidence["event"] = [
        u.say(f"On {date} I {event[0]}, it was great.", f"The user {event[0]} on {date}.", "event", date)
    ]
    evidence["hq"] = [
        u.say(f"{company} is based in {hq}, I commute there.", f"{company} is based in {hq}.", "hq", hq)
    ]
    again = rng.choice([s for s in SLOTS if s not in changed_once and s is not retracted])
    v0 = values[again.name][0]
    u.say("As I said: " + again.first.format(v=v0), again.fact.format(v=v0), again.name, v0)
    u.say(rng.choice(FILLER))
    u.sessions.append([])  # session 3: changes and the retraction
    for slot in changed_once:
        state(slot, 1, False)
    key = u.say(retracted.retract_turn, retracted.retract_fact, retracted.name, None)
    evidence[retracted.name], current[retracted.name] = [key], None
    u.sessions.append([])  # session 4: a second change, small talk
    for slot in changed_twice:
        state(slot, 2, False)
    u.say(rng.choice(FILLER))

    by_name = {s.name: s for s in SLOTS}
    stable = [s for s in SLOTS if s not in changed_once and s is not retracted]
    questions = [
        ("single-fact", by_name[stable[0].name].question, current[stable[0].name], evidence[stable[0].name]),
        *[("updated-fact", s.question, current[s.name], evidence[s.name]) for s in changed_once],
        ("multi-hop", "In which city is the user's employer based?", hq, evidence["employer"] + evidence["hq"]),
        ("temporal", f"When did the user {event[1]}?", date, evidence["event"]),
        ("abstention", retracted.question, ABSTAIN, evidence[retracted.name]),
        ("abstention", rng.choice(NEVER_ASKED), ABSTAIN, []),
    ]  # fmt: skip
    items = []
    for n, (category, question, answer, keys) in enumerate(questions):
        items.append(
            {
                "question_id": f"{uid}_q{n}" + ("_abs" if category == "abstention" else ""),
                "question_type": QUESTION_TYPES[category],
                "question": question,
                "answer": answer,
                "answer_session_ids": sorted({k.rsplit(":", 1)[0] for k in keys}),
                "evidence": keys,  # popped by the caller, which marks these turns has_answer
            }
        )
    return u, items


def generate_benchmark(users: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """`users` users' items in LongMemEval's schema (module docstring); the same list for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(users):
        u, items = _user(f"u{seed}_{i}", rng)
        ids = [u.session_id(s) for s in range(1, len(u.sessions) + 1)]
        dates = [f"2023/0{s}/1{s} (Mon) 10:00" for s in range(1, len(u.sessions) + 1)]
        for item in items:
            item_sessions = [[dict(t) for t in turns] for turns in u.sessions]
            for key in item.pop("evidence"):
                sid, idx = key.rsplit(":", 1)
                item_sessions[ids.index(sid)][int(idx)]["has_answer"] = True
            out.append(
                {
                    **item,
                    "question_date": "2023/06/01 (Thu) 10:00",
                    "haystack_dates": dates,
                    "haystack_session_ids": ids,
                    "haystack_sessions": item_sessions,
                }
            )
    return out
