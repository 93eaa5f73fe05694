"""The `latentmem` lm-evaluation-harness model, driven by lm-eval's own `simple_evaluate` over local task
YAMLs and JSONL files (tests/fixtures/eval/lm_eval), offline."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from latentmem.eval.lm_eval_adapter import PLAIN, LatentMemLM  # noqa: E402
from latentmem.memgen import LatentMemoryModel, MemGenConfig  # noqa: E402
from latentmem.models import load_model  # noqa: E402

LM_EVAL_TASKS = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "lm_eval")
TASKS = ["latentmem_choice", "latentmem_generate", "latentmem_rolling"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluate(model_args: str, monkeypatch) -> dict:
    # the YAMLs name their JSONL files relative to their own directory
    monkeypatch.chdir(LM_EVAL_TASKS)
    return lm_eval.simple_evaluate(
        model="latentmem",
        model_args=model_args,
        tasks=TASKS,
        task_manager=TaskManager(include_path=LM_EVAL_TASKS, include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )


@torch.no_grad()
def plain_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and greedy-ness from one plain forward pass of the reasoner."""
    n_context = len(tok.encode(context))
    ids = torch.tensor([tok.encode(context + continuation)])
    logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    scored = range(n_context - 1, ids.shape[1] - 1)  # position i predicts token i + 1
    total = sum(float(logp[i, ids[0, i + 1]]) for i in scored)
    return total, all(int(logp[i].argmax()) == int(ids[0, i + 1]) for i in scored)


@pytest.fixture(scope="module")
def reasoner():
    return load_model("tiny-qwen2")


def test_simple_evaluate_plain_model_matches_the_reasoner_by_hand(monkeypatch, reasoner):
    out = evaluate("pretrained=tiny-qwen2,batch_size=3", monkeypatch)
    results = out["results"]
    assert {"acc,none", "acc_norm,none"} <= results["latentmem_choice"].keys()
    assert "exact_match,none" in results["latentmem_generate"]
    assert {"word_perplexity,none", "bits_per_byte,none"} <= results["latentmem_rolling"].keys()
    model, tok = reasoner

    # multiple choice: every (context, choice) log-likelihood, batched with left padding, equals the
    # plain reasoner's, computed by hand one at a time
    samples = out["samples"]["latentmem_choice"]
    assert len(samples) == 4
    for sample in samples:
        for (context, continuation), (logprob, greedy) in zip(
            sample["arguments"], sample["filtered_resps"], strict=True
        ):
            want, want_greedy = plain_loglikelihood(model, tok, context, continuation)
            assert logprob == pytest.approx(want, abs=1e-3)
            assert greedy == want_greedy

    # rolling: the whole text, predicted from the prefix token (EOS: this tokenizer has no BOS)
    for sample in out["samples"]["latentmem_rolling"]:
        (text,) = sample["arguments"][0]
        want, _ = plain_loglikelihood(model, tok, tok.eos_token, text)
        assert sample["filtered_resps"][0] == pytest.approx(want, abs=1e-3)

    # generation: the reasoner's own greedy decoding, cut at the first stop string
    for sample in out["samples"]["latentmem_generate"]:
        context, kwargs = sample["arguments"][0]
        ids = torch.tensor([tok.encode(context)])
        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=kwargs["max_gen_toks"], do_sample=False
        )
        text = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in kwargs["until"]:
            text = text.split(stop)[0]
        assert sample["filtered_resps"][0] == text


def requests(lm_samples: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(lm_samples)]


PAIRS = [
    ("Question: What is 2 + 3?\nAnswer:", " 5"),
    ("The capital of France is", " Paris, a city."),
    ("x", " y"),
]


def test_memgen_model_changes_only_what_its_latents_touch(tmp_path, monkeypatch, reasoner):
    # a MemGen model with prompt latents (untrained weaver: random but nonzero latents)
    base, tok = load_model("tiny-qwen2")
    torch.manual_seed(0)
    memgen = LatentMemoryModel(base, tok, MemGenConfig(prompt_latents=2, inference_latents=2, lora_r=2))
    memgen.save_pretrained(tmp_path / "memgen")
    # and one saved with the no-latent config, which must be the plain reasoner exactly
    base2, tok2 = load_model("tiny-qwen2")
    LatentMemoryModel(base2, tok2, PLAIN).save_pretrained(tmp_path / "plain")

    out = evaluate(f"pretrained=tiny-qwen2,memgen={tmp_path / 'memgen'}", monkeypatch)
    assert "acc,none" in out["results"]["latentmem_choice"]
    model, _ = reasoner
    loaded = LatentMemoryModel.from_pretrained(tmp_path / "memgen", base="tiny-qwen2", tokenizer=tok)
    for sample in out["samples"]["latentmem_choice"]:
        for (context, continuation), (logprob, _) in zip(
            sample["arguments"], sample["filtered_resps"], strict=True
        ):
            # the latents between context and continuation change the continuation's likelihood...
            assert logprob != pytest.approx(
                plain_loglikelihood(model, tok, context, continuation)[0], abs=1e-3
            )
            # ...exactly as MemGen's own forward says
            ctx_ids, all_ids = tok.encode(context), tok.encode(context + continuation)
            ids = torch.tensor([all_ids])
            labels = ids.clone()
            labels[0, : len(ctx_ids)] = -100
            with torch.no_grad():
                want = loaded(ids, torch.ones_like(ids), labels).token_logprobs.sum()
            assert logprob == pytest.approx(float(want), abs=1e-3)

    plain_saved = LatentMemLM(pretrained="tiny-qwen2", memgen=str(tmp_path / "plain"), batch_size=2)
    for (ctx, cont), (logprob, greedy) in zip(PAIRS, plain_saved.loglikelihood(requests(PAIRS)), strict=True):
        assert (logprob, greedy) == pytest.approx(plain_loglikelihood(model, tok, ctx, cont), abs=1e-3)


def test_model_args_errors():
    with pytest.raises(Exception, match="batch_size must be a positive integer"):
        LatentMemLM(pretrained="tiny-qwen2", batch_size="auto")
    with pytest.raises(Exception, match="unknown model args \\['temprature'\\]"):
        LatentMemLM(pretrained="tiny-qwen2", temprature=1)
    with pytest.raises(Exception, match="unknown model 'no-such-model'"):
        LatentMemLM(pretrained="no-such-model")


def test_sampled_generation_is_seeded_and_stops_at_until():
    lm = LatentMemLM(pretrained="tiny-qwen2", batch_size=2, max_new_tokens=6, seed=3)
    kwargs = {"until": ["zzz"], "do_sample": True, "temperature": 1.0}
    reqs = [Instance("generate_until", {}, (ctx, dict(kwargs)), i) for i, (ctx, _) in enumerate(PAIRS)]
    again = LatentMemLM(pretrained="tiny-qwen2", batch_size=2, max_new_tokens=6, seed=3)
    first = lm.generate_until(reqs)
    assert first == again.generate_until(reqs) and any(first)
    greedy = lm.generate_until([Instance("generate_until", {}, (PAIRS[0][0], {"until": ["\n"]}), 0)])
    assert "\n" not in greedy[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_a_cuda_request_without_cuda_runs_on_the_cpu():
    # lm-eval's command line asks for cuda:0 unless told otherwise
    assert LatentMemLM(pretrained="tiny-qwen2", device="cuda:0").model.device.type == "cpu"
