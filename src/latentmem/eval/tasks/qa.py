"""Open-question tasks read from local files: a completion is right when it states an alias of the answer.

triviaqa   question, answer (aliases)                    containing an alias
popqa      question, possible_answers                    containing an alias
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from latentmem.eval.answers import alias_match
from latentmem.eval.task import Example
from latentmem.eval.tasks.files import FileTask, RecordError, pick, pick_text


def as_aliases(value: Any) -> list[str]:
    """Answer aliases from the shapes datasets use: a string, a list, a JSON-encoded list (PopQA), or a
    TriviaQA answer object ({"value", "aliases", "normalized_aliases"})."""
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(json.JSONDecodeError):  # else a string that merely starts with "["
            value = json.loads(value)
    if isinstance(value, dict):
        value = [value.get("value"), *(value.get("aliases") or []), *(value.get("normalized_aliases") or [])]
    aliases = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
    unique = list(dict.fromkeys(a.strip() for a in aliases if isinstance(a, str) and a.strip()))
    if not unique:
        raise RecordError(f"no answer alias in {value!r:.80}")
    return unique


class AliasQATask(FileTask):
    """Open questions; a completion is right when it states any alias of the answer (normalised: case,
    punctuation and articles ignored, whole words)."""

    max_new_tokens = 32
    answer_fields: tuple[str, ...] = ()
    instruction = "Answer in a few words."

    def parse(self, record: dict[str, Any]) -> Example:
        question = pick_text(record, "question")
        return Example(f"{question}\n\n{self.instruction}", as_aliases(pick(record, *self.answer_fields)))

    def target(self, example: Example) -> str:
        return example.answer[0]

    def score(self, example: Example, completion: str) -> float:
        return float(alias_match(completion, example.answer))


class TriviaQA(AliasQATask):
    name = "triviaqa"
    answer_fields = ("answer", "answers", "aliases")
    expects = (
        "question (str) and answer (a string, a list of aliases, or TriviaQA's answer object with "
        "value/aliases)"
    )


class PopQA(AliasQATask):
    name = "popqa"
    answer_fields = ("possible_answers", "answer", "answers")
    expects = "question (str) and possible_answers (a list of aliases, or PopQA's JSON-encoded list)"
