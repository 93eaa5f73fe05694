"""GSM8K and MATH (`latentmem.eval.tasks.math`) and the number and LaTeX answer rules they use."""

import pytest

from eval_tasks_fixtures import find, make
from latentmem.eval import answers

# (task, a piece of the prompt, completion, expected score)
CASES = [
    ("gsm8k", "Mira has 12", "12 + 7 = 19\n#### 19", 1.0),
    ("gsm8k", "Mira has 12", "The answer is \\boxed{19}.", 1.0),
    ("gsm8k", "Mira has 12", "She ends with 19 pebbles.", 1.0),  # last number
    ("gsm8k", "Mira has 12", "#### 19.0", 1.0),
    ("gsm8k", "Mira has 12", "#### 18 ... wait, 19 is wrong", 0.0),  # the marked answer wins
    ("gsm8k", "Mira has 12", "12 + 7 = 20", 0.0),
    ("gsm8k", "A crate holds", "#### 2500", 1.0),  # gold '#### 2,500' normalised
    ("gsm8k", "A crate holds", "So $2,500.", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\frac{3}{4}}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{0.75}", 1.0),  # decimal = fraction
    ("math", "frac{1}{2} + ", "\\boxed{3/4}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\tfrac34}", 1.0),
    ("math", "frac{1}{2} + ", "\\boxed{\\frac{2}{3}}", 0.0),
    ("math", "frac{1}{2} + ", "3/4", 0.0),  # no boxed answer
    ("math", "Solve $2x", "so \\boxed{x = 4}.", 1.0),
    ("math", "Solve $2x", "\\boxed{4.0}", 1.0),
    ("math", "Solve $2x", "#### 4", 1.0),
    ("math", "Simplify", "\\boxed{2 \\sqrt{3}}", 1.0),
    ("math", "Simplify", "\\boxed{2\\sqrt3}", 1.0),
    ("math", "Simplify", "\\boxed{3\\sqrt{2}}", 0.0),
    ("math", "interval", "$\\boxed{(-2,2)}$", 1.0),
    ("math", "area 49", "\\boxed{7}", 1.0),  # the answer field, not the boxed '7\\text{ units}'
]


@pytest.mark.parametrize(("key", "needle", "completion", "expected"), CASES)
def test_scoring_cases(key, needle, completion, expected):
    task = make(key)
    assert task.score(find(task, needle), completion) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 1,234", "1234"),
        ("x\n#### -5\n", "-5"),
        ("#### $12.50.", "12.5"),
        ("\\boxed{3.0}", "3"),
        ("I got 1, 2 and 3", "3"),
        ("costs 1,000,000 dollars", "1000000"),
        ("half is .5", "0.5"),
        ("#### none, so 4", "4"),  # a marker without a number: fall back to the last number
        ("no numbers", None),
    ],
)
def test_extract_number(text, expected):
    assert answers.extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("a \\boxed{1} then \\boxed{{2}+1}", "{2}+1"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5.", "5"),
        ("\\boxed{unclosed", None),
        ("nothing", None),
    ],
)
def test_last_boxed(text, expected):
    assert answers.last_boxed(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("\\left( 1, 2 \\right)", "(1,2)", True),
        ("\\$5", "5", True),
        ("10\\%", "10", True),
        ("90^\\circ", "90", True),
        ("\\text{(B)}", "(B)", True),
        ("\\dfrac{1}{3}", "\\frac13", True),
        ("0.333", "\\frac{1}{3}", False),
        ("-\\frac{1}{2}", "-0.5", True),
        ("y = 2x+1", "2x+1", True),
        ("\\frac{1}{0}", "0", False),
        ("x^2", "x^3", False),
    ],
)
def test_math_equal(a, b, equal):
    assert answers.math_equal(a, b) is equal
