"""An error taxonomy decided by simple checks on a completion and the task's own scorer.

    correct       the task scores it 1
    no_answer     nothing but whitespace
    looping       it ends in the same span repeated 4 or more times
    wrong_format  the task's reference completions carry an answer marker (`####`, `\\boxed{`, `Answer:`,
                  a code fence) and this completion does not
    wrong_value   anything else: the answer is where it belongs, and wrong

The checks are deliberately crude and the same for every task, so that counts move only when
completions do; they say which way a completion failed, not why.
"""

from __future__ import annotations

import re
from typing import Literal

from latentmem.eval.task import Example, Task

ErrorType = Literal["correct", "no_answer", "looping", "wrong_format", "wrong_value"]
ERROR_TYPES: tuple[ErrorType, ...] = ("correct", "no_answer", "looping", "wrong_format", "wrong_value")
ANSWER_MARKERS = ("####", "\\boxed{", "Answer:", "```")
_LOOP = re.compile(r"(.{1,40}?)\1{3,}\s*$", re.DOTALL)


def is_looping(text: str) -> bool:
    """Whether `text` ends in one span (1-40 characters) repeated at least 4 times."""
    return _LOOP.search(text.rstrip()) is not None


def classify(task: Task, example: Example, completion: str, score: float) -> ErrorType:
    """The `ErrorType` of `completion` for `example` (see the module docstring)."""
    if score >= 1.0:
        return "correct"
    if not completion.strip():
        return "no_answer"
    if is_looping(completion):
        return "looping"
    reference = task.target(example)
    if any(m in reference and m not in completion for m in ANSWER_MARKERS):
        return "wrong_format"
    return "wrong_value"
