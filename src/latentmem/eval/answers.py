"""Answer extraction and normalisation shared by the evaluation tasks.

Every function is pure text → text (or None when the text holds no answer), so each rule is tested on its
own and the tasks only combine them: numbers (`#### n`, `\\boxed{n}`, the last number), LaTeX answers
(MATH), free-text aliases (TriviaQA, PopQA, BIG-bench generation), choice letters (GPQA, BIG-bench
multiple choice) and fenced code (KodCode, HumanEval).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

LETTERS = string.ascii_uppercase

# ---- numbers (GSM8K, arithmetic) -----------------------------------------------------------------------

# "1,234" is one number but "1, 2" is two: a comma only joins groups of exactly three digits.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_HASHES = re.compile(r"####\s*([^\n]*)")


def normalize_number(text: str) -> str | None:
    """A number's canonical string ("1,234.50" → "1234.5", "85.0" → "85", "$7" → "7"), None if `text`
    is not a single number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def first_number(text: str) -> str | None:
    """The first number written in `text`, normalised."""
    found = _NUMBER.search(text)
    return normalize_number(found[0]) if found else None


def last_number(text: str) -> str | None:
    """The last number written in `text`, normalised."""
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def after_hashes(text: str) -> str | None:
    """What follows the last `####` marker (GSM8K's answer format), stripped; None without a marker."""
    found = _HASHES.findall(text)
    return found[-1].strip() if found else None


def extract_number(text: str) -> str | None:
    """A completion's numeric answer: the first number after the last `####`, else in the last
    `\\boxed{}`, else the last number anywhere in the text; normalised."""
    for marked in (after_hashes(text), last_boxed(text)):
        if marked is not None:
            number = first_number(marked)
            if number is not None:
                return number
    return last_number(text)


# ---- LaTeX answers (MATH) ------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched; `\\boxed 5` gives "5".
    None when there is none or its braces never close."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.startswith(" "):
        token = rest.split(maxsplit=1)
        return token[0].rstrip("$.") if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def _unwrap(text: str, command: str) -> str:
    """Replace every `\\command{X}` by X (braces matched, nested commands handled)."""
    head = "\\" + command + "{"
    while (start := text.find(head)) >= 0:
        depth, end = 0, None
        for i in range(start + len(head) - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                end = i
                break
        if end is None:  # unbalanced: drop just the command name
            return text[:start] + text[start + len(head) :]
        text = text[:start] + text[start + len(head) : end] + text[end + 1 :]
    return text


_UNITS = re.compile(r"\\(?:text|mbox)\{\s[^{}]*\}\s*$")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")  # \frac12 → \frac{1}{2}
_FRAC_HALF_SHORT = re.compile(r"\\frac\{([^{}]*)\}(\d)")  # \frac{1}2 → \frac{1}{2}
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")  # \sqrt3 → \sqrt{3}
_SIMPLE_SLASH = re.compile(r"^(-?\d+)/(\d+)$")


def normalize_math(text: str) -> str:
    """A LaTeX answer in canonical form for string comparison (after Hendrycks et al.'s MATH checker):
    no spaces, `\\left`/`\\right`, `\\!`, dollars, `\\text{}` wrappers (trailing units), degree marks or
    trailing period;
    `\\dfrac`/`\\tfrac` → `\\frac`; `a/b` → `\\frac{a}{b}`; a short `x =` prefix dropped."""
    # a trailing "\text{ units}" (the space marks a unit, as in Hendrycks et al.'s checker) is dropped
    s = _UNITS.sub("", text.strip())
    for command in ("text", "textbf", "mbox", "mathrm"):
        s = _unwrap(s, command)
    for old, new in (
        ("\\!", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
    ):
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    lhs, eq, rhs = s.partition("=")
    if eq and len(lhs) <= 2 and "=" not in rhs:  # "x=5" → "5", but keep real equations
        s = rhs
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if s.startswith("."):
        s = "0" + s
    if m := _SIMPLE_SLASH.match(s):
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    return s


_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")


def math_value(normalized: str) -> Fraction | None:
    """The exact rational value of a normalised answer that is a plain number or `\\frac{a}{b}`."""
    if m := _FRAC.match(normalized):
        if int(m[3]) == 0:
            return None
        value = Fraction(int(m[2]), int(m[3]))
        return -value if m[1] else value
    number = normalize_number(normalized)
    return Fraction(number) if number is not None else None


def math_equal(predicted: str, gold: str) -> bool:
    """Whether two LaTeX answers agree: equal after `normalize_math`, or the same rational number
    ("0.5" = "\\frac{1}{2}" = "1/2")."""
    a, b = normalize_math(predicted), normalize_math(gold)
    if a == b:
        return True
    va, vb = math_value(a), math_value(b)
    return va is not None and va == vb


# ---- free-text answers (TriviaQA, PopQA, BIG-bench generation) -------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def alias_match(completion: str, aliases: Sequence[str]) -> bool:
    """Whether the normalised completion equals or contains (as whole words) a normalised alias."""
    said = f" {normalize_text(completion)} "
    return any(alias and f" {alias} " in said for alias in (normalize_text(a) for a in aliases))


# ---- multiple choice (GPQA, BIG-bench) -----------------------------------------------------------------


def stable_rng(*key: object) -> random.Random:
    """A Random seeded from `key` alone (not Python's salted `hash`), so shuffles repeat across runs."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def shuffled(items: Sequence[str], *key: object) -> tuple[list[str], list[int]]:
    """`items` in an order fixed by `key`, and for each new position the item's old index."""
    order = list(range(len(items)))
    stable_rng(*key).shuffle(order)
    return [items[i] for i in order], order


def lettered(choices: Sequence[str]) -> str:
    """Choices as "A) ...\\nB) ..." lines."""
    return "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def extract_letter(text: str, choices: Sequence[str]) -> str | None:
    """The choice letter a completion picks, or None.

    In order: the last "answer is (B)" / "Answer: B"; a `\\boxed{B}`; a reply that starts with the letter
    ("B", "(B)", "B) ...", not "A dog ..."); the last standalone "(B)"; else a reply that states exactly
    one choice's text.
    """
    valid = LETTERS[: len(choices)]
    letter = f"([{valid}])"
    patterns = (
        rf"(?i:answer)\s*(?:is|:)?[\s:*]*\(?{letter}\)?(?![\w])",  # also markdown "Answer: **B**"
        rf"\\boxed\{{(?:\\text\{{)?\(?{letter}\)?",
        rf"^\s*\(?{letter}(?:[).:]|\s*\n|\s*$)",  # "B", "(B)", "B) ..." but not "A dog"
        rf"\({letter}\)",
    )
    for pattern in patterns:
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    said = f" {normalize_text(text)} "
    hits = [i for i, c in enumerate(choices) if normalize_text(c) and f" {normalize_text(c)} " in said]
    return valid[hits[0]] if len(hits) == 1 else None


# ---- code (KodCode, HumanEval) -------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*)$", re.DOTALL | re.IGNORECASE)


def defines_function(code: str, name: str) -> bool:
    """Whether `code` has a `def name(` (not merely a longer name that starts with `name`)."""
    return re.search(rf"\bdef\s+{re.escape(name)}\s*\(", code) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a completion: the fenced block that defines `entry_point` (else the first block that
    defines any function or class, else the first block); an unclosed fence (a cut-off generation) counts
    up to the end; text with no fence is taken as code."""
    blocks = _FENCE.findall(text)
    if not blocks:
        m = _OPEN_FENCE.search(text)
        return m[1] if m else text
    if entry_point:
        defining = [b for b in blocks if defines_function(b, entry_point)]
        if defining:
            return defining[0]
    defining = [b for b in blocks if re.search(r"^\s*(?:async\s+)?(?:def|class)\s", b, re.MULTILINE)]
    return (defining or blocks)[0]
