"""The built-in evaluation tasks (importing this module registers them all).

Read from local files (`path=`, optional `train_path=`; see `tasks_files` for the split rule):
    task       record fields                                 a completion is scored by
    gsm8k      question, answer ("... #### 72")              `#### n`, else `\\boxed{n}`, else the last number
    math       problem, solution (`\\boxed{}`), answer?      its `\\boxed{}`, normalised LaTeX
    gpqa       question, choices, answer | GPQA's CSV        the choice letter it names
    triviaqa   question, answer (aliases)                    containing an alias
    popqa      question, possible_answers                    containing an alias
    bigbench   a BIG-bench task.json (generation or multiple choice, chosen automatically)
Code, run in a limited subprocess (`tasks_code`): kodcode, humaneval.
Generated, no data (`tasks_synthetic`): arithmetic, facts.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from latentmem.eval.answers import (
    LETTERS,
    after_hashes,
    alias_match,
    extract_letter,
    extract_number,
    last_boxed,
    lettered,
    math_equal,
    normalize_number,
    shuffled,
)
from latentmem.eval.task import Example, TaskError, register_task
from latentmem.eval.tasks_files import FileTask, RecordError, pick, pick_text

CHOICE_INSTRUCTION = "Answer with the letter of the correct choice, as 'Answer: X'."


@register_task("gsm8k")
class GSM8K(FileTask):
    """Grade-school math word problems; the gold number follows `####` in the reference solution."""

    name = "gsm8k"
    max_new_tokens = 256
    expects = "question (str) and answer (str: a worked solution ending in '#### <number>')"
    instruction = (
        "Solve the problem step by step, then give the final answer on its own line as '#### <number>'."
    )

    def parse(self, record: dict[str, Any]) -> Example:
        question, solution = pick_text(record, "question"), pick_text(record, "answer")
        gold = after_hashes(solution)
        number = normalize_number(gold) if gold is not None else None
        if number is None:
            raise RecordError(f"answer must end in '#### <number>', got {solution[-60:]!r}")
        # GSM8K's solutions carry calculator annotations ("<<48/2=24>>") that no model should learn to write
        clean = re.sub(r"<<[^<>]*>>", "", solution)
        return Example(f"{question}\n\n{self.instruction}", number, {"solution": clean})

    def target(self, example: Example) -> str:
        return example.columns["solution"]

    def score(self, example: Example, completion: str) -> float:
        return float(extract_number(completion) == example.answer)


@register_task("math")
class MATH(FileTask):
    """Competition math (Hendrycks et al.): the answer is the last `\\boxed{}` of the solution, compared
    after LaTeX normalisation, with equal fractions and decimals counted as equal."""

    name = "math"
    max_new_tokens = 512
    expects = (
        "problem (str) and solution (str with the final answer in \\boxed{...}); an answer field, when "
        "present, is taken as the gold answer"
    )
    instruction = "Put the final answer in \\boxed{}."

    def parse(self, record: dict[str, Any]) -> Example:
        problem, solution = pick_text(record, "problem"), pick_text(record, "solution")
        answer = record.get("answer") or last_boxed(solution)
        if not answer:
            raise RecordError("the solution has no \\boxed{...} answer and there is no answer field")
        return Example(f"{problem}\n\n{self.instruction}", str(answer), {"solution": solution})

    def target(self, example: Example) -> str:
        return example.columns["solution"]

    def score(self, example: Example, completion: str) -> float:
        predicted = last_boxed(completion) or after_hashes(completion)
        return float(predicted is not None and math_equal(predicted, example.answer))


class MultipleChoiceTask(FileTask):
    """Choices shown lettered, in an order shuffled per example by its question (deterministic, so a model
    that always answers "A" is not rewarded when datasets list the right choice first). The answer is the
    best choice's letter; a completion scores its chosen choice's score relative to the best (1 or 0 for
    single-answer formats)."""

    max_new_tokens = 64

    def choice_example(self, question: str, choices: list[str], scores: list[float]) -> Example:
        if len(choices) < 2 or len(choices) > len(LETTERS) or len(set(choices)) != len(choices):
            raise RecordError(f"need 2 to {len(LETTERS)} distinct choices, got {choices!r:.200}")
        if max(scores) <= 0:
            raise RecordError(f"no choice has a positive score: {dict(zip(choices, scores, strict=True))}")
        order_choices, order = shuffled(choices, question, *choices)
        order_scores = [float(scores[i]) for i in order]
        best = LETTERS[order_scores.index(max(order_scores))]
        prompt = f"{question}\n\n{lettered(order_choices)}\n\n{CHOICE_INSTRUCTION}"
        return Example(prompt, best, {"choices": order_choices, "choice_scores": order_scores})

    def target(self, example: Example) -> str:
        return f"Answer: {example.answer}"

    def score(self, example: Example, completion: str) -> float:
        choices, scores = example.columns["choices"], example.columns["choice_scores"]
        letter = extract_letter(completion, choices)
        return 0.0 if letter is None else max(0.0, scores[LETTERS.index(letter)] / max(scores))


@register_task("gpqa")
class GPQA(MultipleChoiceTask):
    """Graduate-level multiple choice (GPQA's CSV columns, or a generic question/choices/answer form)."""

    name = "gpqa"
    expects = (
        "question (str), choices (list of str) and answer (the correct choice's index, letter or text); "
        "or GPQA's own columns 'Question', 'Correct Answer', 'Incorrect Answer 1' .. 'Incorrect Answer 3'"
    )

    def parse(self, record: dict[str, Any]) -> Example:
        if "Question" in record:
            question = pick_text(record, "Question")
            wrong = [pick_text(record, f"Incorrect Answer {i}").strip() for i in (1, 2, 3)]
            choices, correct = [pick_text(record, "Correct Answer").strip(), *wrong], 0
        else:
            question, choices = pick_text(record, "question"), pick(record, "choices")
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise RecordError(f"choices must be a list of strings, got {choices!r:.80}")
            correct = self._correct_index(pick(record, "answer"), choices)
        return self.choice_example(question, choices, [float(i == correct) for i in range(len(choices))])

    @staticmethod
    def _correct_index(answer: Any, choices: list[str]) -> int:
        if isinstance(answer, int) and 0 <= answer < len(choices):
            return answer
        if isinstance(answer, str):
            if len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[: len(choices)]:
                return LETTERS.index(answer.strip().upper())
            if answer in choices:
                return choices.index(answer)
        raise RecordError(f"answer {answer!r} is not an index, a letter or the text of one of the choices")


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


@register_task("triviaqa")
class TriviaQA(AliasQATask):
    name = "triviaqa"
    answer_fields = ("answer", "answers", "aliases")
    expects = (
        "question (str) and answer (a string, a list of aliases, or TriviaQA's answer object with "
        "value/aliases)"
    )


@register_task("popqa")
class PopQA(AliasQATask):
    name = "popqa"
    answer_fields = ("possible_answers", "answer", "answers")
    expects = "question (str) and possible_answers (a list of aliases, or PopQA's JSON-encoded list)"


BigBenchForm = Literal["auto", "generate", "choice"]


@register_task("bigbench")
class BigBench(MultipleChoiceTask):
    """Any BIG-bench JSON task (`task.json`): examples with `input` and either `target` (generation,
    scored by alias match against the targets) or `target_scores` (multiple choice, lettered and
    shuffled). `form="auto"` picks multiple choice when every example has `target_scores`, else
    generation when every example has `target`. The task's `task_prefix` starts every prompt."""

    name = "bigbench"
    expects = "input (str) and target (str or list of str) or target_scores ({choice: score})"

    def __init__(
        self,
        path: str | Path,
        train_path: str | Path | None = None,
        test_fraction: float = 0.2,
        form: BigBenchForm = "auto",
    ):
        if form not in ("auto", "generate", "choice"):
            raise TaskError(f"bigbench: form must be 'auto', 'generate' or 'choice', got {form!r}")
        super().__init__(path, train_path, test_fraction)
        self.form = form
        self.prefix = ""

    def records(self, path: Path) -> list[dict[str, Any]]:
        if path.suffix != ".json":
            raise TaskError(f"{path} is not a BIG-bench task.json")
        try:
            task = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TaskError(f"{path} is not a readable JSON file: {exc}") from None
        if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
            raise TaskError(f"{path} has no 'examples' list, so it is not a BIG-bench JSON task")
        self.prefix = str(task.get("task_prefix") or "").strip()
        rows = [r for r in task["examples"] if isinstance(r, dict)]
        if self.form == "auto" and rows:
            if all(isinstance(r.get("target_scores"), dict) for r in rows):
                self.form = "choice"
            elif all(r.get("target") is not None for r in rows):
                self.form = "generate"
            else:
                raise TaskError(
                    f"{path}: form='auto' needs target_scores in every example (multiple choice) or a "
                    "target in every example (generation); pass form= to choose one"
                )
        return rows

    def parse(self, record: dict[str, Any]) -> Example:
        question = pick_text(record, "input").strip()
        if self.prefix:
            question = f"{self.prefix}\n\n{question}"
        if self.form == "choice":
            scores = pick(record, "target_scores")
            if not isinstance(scores, dict):
                raise RecordError(f"target_scores must map choices to scores, got {scores!r:.80}")
            return self.choice_example(
                question, [str(c) for c in scores], [float(s) for s in scores.values()]
            )
        return Example(question, as_aliases(pick(record, "target")))

    def target(self, example: Example) -> str:
        return super().target(example) if self.form == "choice" else example.answer[0]

    def score(self, example: Example, completion: str) -> float:
        if self.form == "choice":
            return super().score(example, completion)
        return float(alias_match(completion, example.answer))


# the other built-in tasks register themselves on import
from latentmem.eval import tasks_code, tasks_synthetic  # noqa: E402, F401
