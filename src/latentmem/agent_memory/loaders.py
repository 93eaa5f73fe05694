"""Loaders of the two public long-conversation benchmarks from a local file, into `Episode`s.

Neither dataset ships with latentmem (LoCoMo's licence forbids redistribution): download them yourself
and pass the path.

- LoCoMo (`locomo10.json`): a list of samples, each with `sample_id`, a `conversation` holding `speaker_a`,
  `speaker_b` and `session_N` lists of turns {speaker, dia_id, text} (with `session_N_date_time`), and
  `qa` items {question, answer, evidence (dia_ids), category}. Categories: 1 multi-hop, 2 temporal,
  3 open-domain, 4 single-hop, 5 adversarial (unanswerable: gold "unknown", its `adversarial_answer` is
  the trap). Every turn is a fact, "speaker: text".
- LongMemEval (`longmemeval_s.json`): a list of items {question_id, question_type, question, answer,
  haystack_sessions (lists of {role, content, has_answer?}), haystack_session_ids, haystack_dates,
  answer_session_ids}; a question_id ending in `_abs` is an abstention. Items with the same haystack are
  one episode. User turns are facts (a turn's `fact` key, when present, instead of its content: the
  generated benchmark's extracted facts, null for small talk), and `has_answer` turns are the evidence.

A file that does not follow its schema is a `BenchmarkSchemaError` naming the field, e.g.
`locomo10.json[0].qa[2].question: missing`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentmem.agent_memory.episodes import ABSTAIN, Episode, Question, Session, Turn
from latentmem.agent_memory.errors import BenchmarkSchemaError

LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-fact", 5: "abstention"}
LONGMEMEVAL_CATEGORIES = {
    "single-session-user": "single-fact",
    "single-session-assistant": "single-fact",
    "single-session-preference": "single-fact",
    "multi-session": "multi-hop",
    "knowledge-update": "updated-fact",
    "temporal-reasoning": "temporal",
}
_SESSION = re.compile(r"^session_(\d+)$")


def _read(path: str | Path) -> tuple[list[Any], str]:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkSchemaError(f"{path}: no such file (download the dataset and pass its path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkSchemaError(f"{path.name}: not a JSON file ({exc})") from None
    if not isinstance(data, list):
        raise BenchmarkSchemaError(f"{path.name}: expected a list of records, got {type(data).__name__}")
    return data, path.name


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`obj[key]`, which must be a `kind`; else an error naming `where.key`."""
    if not isinstance(obj, dict):
        raise BenchmarkSchemaError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise BenchmarkSchemaError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkSchemaError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


# ---- LoCoMo ----------------------------------------------------------------------------------------
def load_locomo(path: str | Path) -> list[Episode]:
    """The conversations of a LoCoMo file, one episode each (module docstring)."""
    data, name = _read(path)
    return [_locomo_sample(sample, f"{name}[{i}]") for i, sample in enumerate(data)]


def _locomo_sample(sample: Any, where: str) -> Episode:
    sample_id = str(_field(sample, "sample_id", (str, int), where))
    conv = _field(sample, "conversation", dict, where)
    numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION.match(k)))
    if not numbers:
        raise BenchmarkSchemaError(f"{where}.conversation.session_1: missing (no session_N lists)")
    sessions = []
    for n in numbers:
        turns_where = f"{where}.conversation.session_{n}"
        raw = _field(conv, f"session_{n}", list, f"{where}.conversation")
        turns = []
        for j, t in enumerate(raw):
            tw = f"{turns_where}[{j}]"
            speaker = _field(t, "speaker", str, tw)
            text = _field(t, "text", str, tw)
            turns.append(Turn(_field(t, "dia_id", str, tw), speaker, text, f"{speaker}: {text}"))
        date = conv.get(f"session_{n}_date_time")
        sessions.append(Session(f"session_{n}", str(date) if date is not None else None, tuple(turns)))
    questions = []
    for j, qa in enumerate(_field(sample, "qa", list, where)):
        qw = f"{where}.qa[{j}]"
        category = _field(qa, "category", int, qw)
        if category not in LOCOMO_CATEGORIES:
            raise BenchmarkSchemaError(f"{qw}.category: expected 1-5, got {category}")
        answer = ABSTAIN if category == 5 else str(_field(qa, "answer", (str, int, float), qw))
        evidence = _field(qa, "evidence", list, qw)
        if not all(isinstance(e, str) for e in evidence):
            raise BenchmarkSchemaError(f"{qw}.evidence: expected a list of dia_id strings")
        questions.append(
            Question(
                f"{sample_id}_q{j}",
                LOCOMO_CATEGORIES[category],
                _field(qa, "question", str, qw),
                answer,
                tuple(evidence),
            )
        )
    return Episode(sample_id, tuple(sessions), tuple(questions))


# ---- LongMemEval -----------------------------------------------------------------------------------
def load_longmemeval(path: str | Path) -> list[Episode]:
    """The items of a LongMemEval file, those sharing a haystack as one episode (module docstring)."""
    data, name = _read(path)
    return longmemeval_episodes(data, name)


def longmemeval_episodes(items: Sequence[Any], name: str = "longmemeval") -> list[Episode]:
    """LongMemEval-schema items (a file's, or `bench_data.generate_benchmark`'s) as episodes."""
    groups: dict[tuple[str, ...], tuple[Episode, list[Question]]] = {}
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        qid = str(_field(item, "question_id", (str, int), where))
        qtype = _field(item, "question_type", str, where)
        if qtype not in LONGMEMEVAL_CATEGORIES:
            raise BenchmarkSchemaError(
                f"{where}.question_type: unknown {qtype!r}; expected one of {', '.join(LONGMEMEVAL_CATEGORIES)}"
            )
        ids = [str(s) for s in _field(item, "haystack_session_ids", list, where)]
        dates = _field(item, "haystack_dates", list, where)
        raw_sessions = _field(item, "haystack_sessions", list, where)
        if not len(ids) == len(dates) == len(raw_sessions):
            raise BenchmarkSchemaError(
                f"{where}.haystack_sessions: {len(raw_sessions)} sessions for {len(ids)} haystack_session_ids "
                f"and {len(dates)} haystack_dates"
            )
        _field(item, "answer_session_ids", list, where)
        sessions, evidence = [], []
        for s, (sid, date, turns) in enumerate(zip(ids, dates, raw_sessions, strict=True)):
            sw = f"{where}.haystack_sessions[{s}]"
            if not isinstance(turns, list):
                raise BenchmarkSchemaError(f"{sw}: expected a list of turns, got {type(turns).__name__}")
            out = []
            for j, t in enumerate(turns):
                role = _field(t, "role", str, f"{sw}[{j}]")
                content = _field(t, "content", str, f"{sw}[{j}]")
                key = f"{sid}:{j}"
                # a `fact` key (even null: small talk) overrides the default, the user's words
                fact = t.get("fact", content if role == "user" else None)
                out.append(Turn(key, role, content, fact, t.get("slot"), t.get("value")))
                if t.get("has_answer"):
                    evidence.append(key)
            sessions.append(Session(sid, str(date), tuple(out)))
        abstain = qid.endswith("_abs")
        question = Question(
            qid,
            "abstention" if abstain else LONGMEMEVAL_CATEGORIES[qtype],
            _field(item, "question", str, where),
            ABSTAIN if abstain else str(_field(item, "answer", (str, int, float), where)),
            tuple(evidence),
        )
        key = tuple(ids)
        if key not in groups:
            groups[key] = (Episode(ids[0] if ids else qid, tuple(sessions), ()), [])
        groups[key][1].append(question)
    return [Episode(ep.id, ep.sessions, tuple(qs)) for ep, qs in groups.values()]
