"""TriviaQA and PopQA (`latentmem.eval.tasks.qa`): a completion is right when it states an alias."""

import pytest

from eval_tasks_fixtures import find, make

# (task, a piece of the prompt, completion, expected score)
CASES = [
    ("triviaqa", "Dornhal", "It is the Silver Vey.", 1.0),
    ("triviaqa", "Dornhal", "vey river!", 1.0),
    ("triviaqa", "Dornhal", "The Silver Veyne", 0.0),  # whole words only
    ("triviaqa", "Quellen", "a. brisk", 1.0),
    ("triviaqa", "Ostmark", "TEAL", 1.0),
    ("triviaqa", "Ostmark", "steal", 0.0),
    ("triviaqa", "Tavern Pact", "In 1822.", 1.0),
    ("triviaqa", "Lumen saga", "Wandering Gull", 1.0),  # article dropped
    ("popqa", "Kel Varno", "Kel Varno was a map maker.", 1.0),
    ("popqa", "Kel Varno", "a painter", 0.0),
    ("popqa", "Delvessa", "orinthia", 1.0),
]


@pytest.mark.parametrize(("key", "needle", "completion", "expected"), CASES)
def test_scoring_cases(key, needle, completion, expected):
    task = make(key)
    assert task.score(find(task, needle), completion) == expected
