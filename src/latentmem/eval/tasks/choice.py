"""Multiple-choice tasks read from local files: lettered choices, shuffled per question.

gpqa       question, choices, answer | GPQA's CSV        the choice letter it names
bigbench   a BIG-bench task.json (generation or multiple choice, chosen automatically)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from latentmem.eval.answers import LETTERS, alias_match, extract_letter, lettered, shuffled
from latentmem.eval.task import Example, TaskError
from latentmem.eval.tasks.files import FileTask, RecordError, pick, pick_text
from latentmem.eval.tasks.qa import as_aliases

CHOICE_INSTRUCTION = "Answer with the letter of the correct choice, as 'Answer: X'."


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


BigBenchForm = Literal["auto", "generate", "choice"]


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
