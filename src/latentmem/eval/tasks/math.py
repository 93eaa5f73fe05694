"""Math tasks read from local files: the gold answer is a number (GSM8K) or a LaTeX expression (MATH).

gsm8k      question, answer ("... #### 72")              `#### n`, else `\\boxed{n}`, else the last number
math       problem, solution (`\\boxed{}`), answer?      its `\\boxed{}`, normalised LaTeX
"""

from __future__ import annotations

import re
from typing import Any

from latentmem.eval.answers import after_hashes, extract_number, last_boxed, math_equal, normalize_number
from latentmem.eval.task import Example
from latentmem.eval.tasks.files import FileTask, RecordError, pick_text


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
