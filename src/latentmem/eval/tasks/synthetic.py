"""Tasks generated on the fly: no data files, deterministic under `seed`.

arithmetic  "What is 47 + 38?" → "47 + 38 = 85.\\n#### 85"; train and test drawn from disjoint random
            streams, and no test question appears in the train split.
facts       a base of invented entities (countries, people, devices) with invented attributes that no
            pretrained model can know. The train split asks each fact in its canonical wording and
            trains on the stated fact; the test split asks the same facts in paraphrased wording. So a
            method scores only by storing facts from training and recalling them under new wording.
general     what the base model already knows: real capitals and small sums asked in plain words
            ("What is the capital of Norway?", "What is 12 plus 7?"), the recall memory's retention
            probe; a retention task for `compare` (how much of it a trained method keeps).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from latentmem.eval.answers import alias_match, extract_number, stable_rng
from latentmem.eval.task import Example, Split, Task, TaskError

OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class Arithmetic(Task):
    """Two-operand integer arithmetic with operands in [low, high]; for "-" the larger operand comes
    first, so answers are never negative. The answer format is GSM8K's `#### n`."""

    name = "arithmetic"
    max_new_tokens = 32
    instruction = "Give the final answer as '#### <number>'."

    def __init__(
        self,
        n_train: int = 500,
        n_test: int = 100,
        seed: int = 0,
        low: int = 10,
        high: int = 99,
        ops: str = "+-",
    ):
        unknown = sorted(set(ops) - set(OPERATIONS))
        if not ops or unknown:
            raise TaskError(f"arithmetic: ops must be made of {''.join(OPERATIONS)}, got {ops!r}")
        if not 0 <= low <= high:
            raise TaskError(f"arithmetic: need 0 <= low <= high, got low={low}, high={high}")
        distinct = len(set(ops)) * (high - low + 1) ** 2
        if n_train < 0 or n_test < 0 or n_train + n_test > distinct // 2:
            raise TaskError(
                f"arithmetic: n_train + n_test = {n_train + n_test} must be >= 0 and at most half of the "
                f"{distinct} distinct questions with these operands; widen low/high or add ops"
            )
        self.n_train, self.n_test, self.seed = n_train, n_test, seed
        self.low, self.high, self.ops = low, high, ops
        self._splits: dict[Split, list[Example]] = {}

    def _draw(self, split: Split, n: int, exclude: set[str]) -> list[Example]:
        rng = stable_rng("arithmetic", split, self.seed)
        examples: list[Example] = []
        seen = set(exclude)
        while len(examples) < n:  # terminates: n is at most half of the distinct questions (checked above)
            op = rng.choice(self.ops)
            a, b = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
            if op == "-" and a < b:
                a, b = b, a
            expression = f"{a} {op} {b}"
            if expression in seen:
                continue
            seen.add(expression)
            answer = str(OPERATIONS[op](a, b))
            examples.append(
                Example(f"What is {expression}?\n\n{self.instruction}", answer, {"expression": expression})
            )
        return examples

    def load(self, split: Split) -> list[Example]:
        if not self._splits:
            test = self._draw("test", self.n_test, set())
            train = self._draw("train", self.n_train, {ex.columns["expression"] for ex in test})
            self._splits = {"train": train, "test": test}
        return list(self._splits[split])

    def target(self, example: Example) -> str:
        return f"{example.columns['expression']} = {example.answer}.\n#### {example.answer}"

    def score(self, example: Example, completion: str) -> float:
        return float(extract_number(completion) == example.answer)


@dataclass(frozen=True)
class Relation:
    """One kind of fact: how it is asked (canonical and paraphrased), how it is stated, and what kinds of
    invented names fill its subject and value."""

    question: str
    statement: str
    paraphrases: tuple[str, ...]
    subject: str  # a name kind of `_invent`
    value: str


RELATIONS = (
    Relation(
        "What is the capital of {s}?",
        "The capital of {s} is {v}.",
        (
            "Which city is the capital of {s}?",
            "Name the capital city of {s}.",
            "{s} has its capital in which city?",
        ),
        "country",
        "city",
    ),
    Relation(
        "Where was {s} born?",
        "{s} was born in {v}.",
        ("In which city was {s} born?", "What is the birthplace of {s}?", "{s} was born in which city?"),
        "person",
        "city",
    ),
    Relation(
        "Who invented the {s}?",
        "The {s} was invented by {v}.",
        ("Who is the inventor of the {s}?", "The {s} was invented by whom?", "Which person created the {s}?"),
        "device",
        "person",
    ),
    Relation(
        "What language is spoken in {s}?",
        "People in {s} speak {v}.",
        (
            "Which language do people in {s} speak?",
            "What is the main language of {s}?",
            "In {s}, people speak which language?",
        ),
        "country",
        "language",
    ),
)

_SYLLABLES = (
    "vel tra mor dek sil qua zen bri tho lum ris pol dan ost vei gar nim ka lo ren sha vu del fen "
    "cor ix om bal ter yss un dra pel mir od ez hal quin tev sor arn"
).split()
_ENDINGS = {
    "country": ("ana", "ovia", "esh", "ria", "mark"),
    "city": ("holm", "ford", "ara", "dun", "eth"),
    "language": ("ish", "ese", "ic", "ari"),
    "device": ("lamp", "scope", "wheel", "loom", "phone"),
}


def _word(rng, syllables: int, ending: str = "") -> str:
    return ("".join(rng.choice(_SYLLABLES) for _ in range(syllables)) + ending).capitalize()


def _invent(rng, kind: str) -> str:
    """An invented name of `kind` (country, city, language, device or person)."""
    if kind == "person":
        return f"{_word(rng, 2)} {_word(rng, 3)}"
    name = _word(rng, rng.randint(1, 2), rng.choice(_ENDINGS[kind]))
    return name.lower() if kind == "device" else name


class Facts(Task):
    """`n_facts` invented facts (see the module docstring); answers are scored by alias match.

    `unseen=k`: k more facts that no method trains on: they are `memories()`, written into the memory
    methods' stores after training, and the test split asks them too (`columns["group"]` "unseen", the
    others "seen"), so that a memory is measured on facts it was never trained on.

    `path=`: the user's own facts instead, a data file (`latentmem.eval.tasks.files`) whose records hold
    `fact` (or `statement`: the memory), `question`, `answer` (a string or a list of aliases), optionally
    `paraphrase` and `unseen` (true: a fact of the `memories()`, never trained on). The train split asks
    `question` and trains on the fact; the test split asks `paraphrase` (`question` where a record has
    none). `n_facts` then takes the file's first n (all by default)."""

    name = "facts"
    max_new_tokens = 32
    expects = (
        "fact (or statement), question and answer (a string or a list of aliases); paraphrase and unseen "
        "(true/false) optional"
    )

    def __init__(self, n_facts: int | None = None, seed: int = 0, path: str | None = None, unseen: int = 0):
        limit = 1000 if path is None else 10**9
        if n_facts is not None and not 1 <= n_facts <= limit:
            raise TaskError(f"facts: n_facts must be in [1, {limit}], got {n_facts}")
        if not 0 <= unseen <= 1000:
            raise TaskError(f"facts: unseen must be in [0, 1000], got {unseen}")
        if unseen and path is not None:
            raise TaskError(
                "facts: unseen= counts generated facts; in a file, mark records with unseen: true"
            )
        self.n_facts = n_facts if n_facts is not None or path is not None else 100
        self.seed, self.path, self.unseen = seed, path, unseen
        self._facts: list[tuple[Relation, str, str]] | None = None
        self._cache: list[tuple[Example, Example, bool]] | None = None

    def facts(self) -> list[tuple[Relation, str, str]]:
        """(relation, subject, value) for every fact, the `unseen` ones last; every subject is unique and
        appears in one fact (the first `n_facts` do not depend on `unseen`)."""
        if self._facts is None:
            rng = stable_rng("facts", self.seed)
            used: set[str] = set()

            def fresh(kind: str) -> str:
                while (name := _invent(rng, kind)).lower() in used:
                    pass  # redraw on a collision, so each name means one thing
                used.add(name.lower())
                return name

            self._facts = []
            for i in range(self.n_facts + self.unseen):
                relation = RELATIONS[i % len(RELATIONS)]
                self._facts.append((relation, fresh(relation.subject), fresh(relation.value)))
        return self._facts

    def _records(self) -> list[tuple[Example, Example, bool]]:
        """Per fact: its canonical example, its test example (the paraphrase) and whether it is unseen;
        built (a fact file read) once, then shared by the splits, `memories` and `validation`."""
        if self._cache is None:
            self._cache = self._build_records()
        return self._cache

    def _build_records(self) -> list[tuple[Example, Example, bool]]:
        out = []
        if self.path is None:
            for i, (relation, subject, value) in enumerate(self.facts()):
                paraphrase = stable_rng("facts-paraphrase", self.seed, subject).choice(relation.paraphrases)
                statement = {"statement": relation.statement.format(s=subject, v=value)}
                out.append(
                    (
                        Example(relation.question.format(s=subject), value, statement),
                        Example(paraphrase.format(s=subject), value, statement),
                        i >= self.n_facts,
                    )
                )
            return out
        from latentmem.eval.tasks.files import RecordError, pick, pick_text, read_records
        from latentmem.eval.tasks.qa import as_aliases

        for i, record in enumerate(read_records(self.path)[: self.n_facts]):
            try:
                statement = {"statement": pick_text(record, "fact", "statement")}
                question = pick_text(record, "question")
                paraphrase = (
                    pick_text(record, "paraphrase") if record.get("paraphrase") is not None else question
                )
                aliases = as_aliases(pick(record, "answer"))
            except RecordError as exc:
                raise TaskError(
                    f"facts: {self.path} record {i}: {exc}. Each record needs {self.expects}"
                ) from None
            unseen = record.get("unseen", False)
            if not isinstance(unseen, bool):
                raise TaskError(
                    f"facts: {self.path} record {i}: unseen must be true or false, got {unseen!r}"
                )
            out.append(
                (Example(question, aliases, statement), Example(paraphrase, aliases, statement), unseen)
            )
        if not out:
            raise TaskError(f"facts: {self.path} has no records. Each record needs {self.expects}")
        return out

    def _asked(self, example: Example, unseen: bool) -> Example:
        """`example` as the test and validation splits ask it: marked seen / unseen where any fact is."""
        if not any(u for *_, u in self._records()):
            return example
        return Example(
            example.prompt, example.answer, {**example.columns, "group": "unseen" if unseen else "seen"}
        )

    def load(self, split: Split) -> list[Example]:
        records = self._records()
        if split == "train":
            return [canonical for canonical, _, unseen in records if not unseen]
        return [self._asked(test, unseen) for _, test, unseen in records]

    def memories(self) -> list[Example]:
        return [canonical for canonical, _, unseen in self._records() if unseen]

    def validation(self) -> list[Example] | None:
        """Generated facts: every fact asked in a paraphrase that neither the train nor the test split uses
        (grouped as the test split is). A fact file: None (its records carry one paraphrase)."""
        if self.path is not None:
            return None
        out = []
        for (relation, subject, _), (canonical, test, unseen) in zip(
            self.facts(), self._records(), strict=True
        ):
            others = [q for q in (p.format(s=subject) for p in relation.paraphrases) if q != test.prompt]
            prompt = stable_rng("facts-validation", self.seed, subject).choice(others)
            out.append(self._asked(Example(prompt, canonical.answer, canonical.columns), unseen))
        return out

    def target(self, example: Example) -> str:
        return example.columns["statement"]

    def score(self, example: Example, completion: str) -> float:
        answers = example.answer if isinstance(example.answer, list) else [example.answer]
        return float(alias_match(completion, answers))


def _general(qa) -> Example:
    kind = "capital" if qa.question.startswith("What is the capital") else "sum"
    return Example(qa.question, qa.answer, {"group": kind})


class General(Task):
    """General questions with known answers (`latentmem.recall.data.general_task`): the 16 real capitals
    and small sums alternating, then sums (`columns["group"]`: capital / sum). The test split is the
    first `n_test` of them; the train split draws sums under another seed, none of them a test question.
    Scored by whole-word match of the answer in the completion."""

    name = "general"
    max_new_tokens = 32

    def __init__(self, n_train: int = 200, n_test: int = 100, seed: int = 0):
        from latentmem.recall.data import general_task

        if n_train < 0 or not 1 <= n_test <= 500:
            raise TaskError(f"general: need n_train >= 0 and 1 <= n_test <= 500, got {n_train}, {n_test}")
        test = [_general(q) for q in general_task(n_test, seed)]
        asked = {ex.prompt for ex in test}
        pool = [_general(q) for q in general_task(500, seed + 1)]
        self._splits: dict[Split, list[Example]] = {
            "test": test,
            "train": [ex for ex in pool if ex.prompt not in asked][:n_train],
        }

    def load(self, split: Split) -> list[Example]:
        return list(self._splits[split])

    def target(self, example: Example) -> str:
        return f"{example.answer}."

    def score(self, example: Example, completion: str) -> float:
        return float(alias_match(completion, [example.answer]))
