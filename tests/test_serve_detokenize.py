"""`StopScanner`: incremental detokenisation equals decoding the whole reply, stop sequences included."""

from __future__ import annotations

import random

import pytest

from latentmem.models import load_model
from latentmem.serve.chat_api import StopScanner

TEXTS = [
    "The answer is 42. Then we stop.\nNext line: café, naïve, 東京, emoji 🙂 and more text",
    "plus minus equals the sum result because apple orange red blue green",
]


def _reference(tokenizer, ids: list[int], stops: list[str]) -> tuple[str, bool]:
    """The whole reply decoded at once, cut at its first stop sequence."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _streamed(tokenizer, ids: list[int], stops: list[str], rng: random.Random) -> tuple[str, bool]:
    scanner, out, i = StopScanner(tokenizer, stops), [], 0
    while i < len(ids):
        n = rng.choice([1, 1, 1, 2, 3])  # one token per event, or a few that queued up
        out.append(scanner.push(ids[i : i + n]))
        i += n
    out.append(scanner.flush())
    return "".join(out), scanner.stopped


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-llama", "smollm2-135m-instruct"])
def test_streamed_text_equals_the_whole_reply_decoded(model):
    _, tokenizer = load_model(model)
    rng = random.Random(0)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for stops in ([], ["stop."], ["\n", "zzz"], ["🙂"], ["東"]):
            assert _streamed(tokenizer, ids, stops, rng) == _reference(tokenizer, ids, stops), (text, stops)
    # random ids (bytes split inside characters, special tokens) read the same too
    for _ in range(20):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 60))]
        assert _streamed(tokenizer, ids, [], rng) == _reference(tokenizer, ids, [])


def test_each_push_decodes_a_window_not_the_whole_reply():
    _, tokenizer = load_model("tiny-qwen2")
    lengths = []
    real = tokenizer.decode

    def counting(ids, **kwargs):
        lengths.append(len(ids))
        return real(ids, **kwargs)

    tokenizer.decode = counting
    scanner = StopScanner(tokenizer, [])
    ids = tokenizer(" ".join(["the quick brown fox"] * 100), add_special_tokens=False)["input_ids"]
    text = "".join(scanner.push([token]) for token in ids) + scanner.flush()
    assert text == real(ids, skip_special_tokens=True)
    assert len(ids) > 300 and max(lengths) < 10  # a full decode per push would reach len(ids)
