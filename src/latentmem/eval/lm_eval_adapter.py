"""An lm-evaluation-harness model named `latentmem`: any lm-eval task, run through a MemGen model.

    import latentmem.eval.lm_eval_adapter  # registers "latentmem" with lm-eval
    lm_eval.simple_evaluate(model="latentmem", model_args="pretrained=smollm2-135m-instruct,memgen=runs/x",
                            tasks=["arc_easy"])

or from the shell (lm-eval's own CLI, with the model registered first):

    python -m latentmem.eval.lm_eval_adapter run --model latentmem \\
        --model_args pretrained=smollm2-135m-instruct,memgen=runs/x --tasks arc_easy

Model args: `pretrained` (a name `latentmem.models.load_model` knows, or a local model directory),
`memgen` (a `LatentMemoryModel.save_pretrained` directory; without it the plain reasoner, through a
MemGen model that inserts nothing), `dtype`, `device` (default: CUDA when available), `batch_size`,
`max_new_tokens` (the default generation budget), `max_length`, `seed` (for sampled generation).

Every request goes through MemGen's own code paths: log-likelihoods through its training forward (labels
on the continuation only, so prompt latents sit between context and continuation and inference latents
after its delimiters), generation through its cached generator. Generation stops at EOS or the token
budget and is then cut at the first `until` string (MemGen's generator has no string stop criteria).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from latentmem.decoding import IGNORE, left_padded, pad_rows
from latentmem.errors import LatentMemError, ModelLoadError
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig, TriggerConfig
from latentmem.models import load_model
from latentmem.sampling import SamplingConfig

T = TypeVar("T")
logger = logging.getLogger(__name__)
DEFAULT_MAX_LENGTH = 2048  # when the model's config names no context length

# MemGen with nothing to insert: exactly the plain reasoner (the weaver's LoRA is never switched on)
PLAIN = MemGenConfig(prompt_latents=0, trigger=TriggerConfig(policy="never"))


def _resolve_device(device: str | None) -> str:
    """The device to run on: as asked, or CUDA when there is one and none was asked. lm-eval's command
    line asks for cuda:0 unless told otherwise, so a CUDA request without CUDA falls back to the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("latentmem: device %s was asked for but CUDA is not available; using the CPU", device)
        return "cpu"
    return device


def _batches(items: Sequence[T], size: int, key: Callable[[T], int]) -> Iterator[list[tuple[int, T]]]:
    """(original index, item) batches of `size`, longest `key` first, so a batch pads little and a
    too-long batch fails at once rather than at the end."""
    order = sorted(range(len(items)), key=lambda i: -key(items[i]))
    for start in range(0, len(order), size):
        yield [(i, items[i]) for i in order[start : start + size]]


@register_model("latentmem")
class LatentMemLM(TemplateLM):
    """lm-eval's view of a `LatentMemoryModel` (see the module docstring for the model args)."""

    def __init__(
        self,
        pretrained: str,
        memgen: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int = 256,
        max_length: int | None = None,
        seed: int = 0,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused.keys() - {"max_batch_size"}:  # lm-eval passes max_batch_size to every model
            raise ModelLoadError(
                f"latentmem: unknown model args {sorted(unused.keys() - {'max_batch_size'})}; expected "
                "pretrained, memgen, dtype, device, batch_size, max_new_tokens, max_length, seed"
            )
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ModelLoadError(f"latentmem: batch_size must be a positive integer, got {batch_size!r}")
        reasoner, tokenizer = load_model(pretrained, dtype=dtype, device=_resolve_device(device))
        if memgen:
            self.model = LatentMemoryModel.from_pretrained(memgen, base=reasoner, tokenizer=tokenizer)
        else:
            self.model = LatentMemoryModel(reasoner, tokenizer, PLAIN)
        self.model.eval()
        self.tokenizer = tokenizer
        self.pretrained = str(pretrained)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self._device = self.model.device
        cfg = reasoner.config.get_text_config()
        context = (
            max_length or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        )
        # the latents MemGen may splice in take positions too
        mc = self.model.config
        latents = mc.prompt_latents + (mc.inference_latents * mc.max_inference_insertions)
        self.max_length = int(context or DEFAULT_MAX_LENGTH) - latents
        if self.max_length < 2:
            raise ModelLoadError(
                f"latentmem: a context of {context} positions leaves no room beside {latents} latents"
            )

    # ---- what TemplateLM needs ---------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: BOS when the tokenizer has one, else EOS (as lm-eval's HF model)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    # ---- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(
        self, pairs: list[tuple[list[int], list[int]]], desc: str, disable_tqdm: bool
    ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether every continuation token is the argmax) for each
        (context tokens, continuation tokens) pair, by MemGen's forward with labels on the continuation.
        Too-long pairs keep their last `max_length` tokens."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        pad = self.tokenizer.pad_token_id
        with tqdm(total=len(pairs), desc=desc, disable=disable_tqdm) as bar:
            for batch in _batches(pairs, self.batch_size, key=lambda p: len(p[0]) + len(p[1])):
                seqs, n_scored = [], []
                for _, (context, continuation) in batch:
                    seq = (context + continuation)[-self.max_length :]
                    seqs.append(seq)
                    n_scored.append(min(len(continuation), len(seq) - 1))  # the first token has no prediction
                ids, mask = left_padded(seqs, pad)
                scored = [
                    [IGNORE] * (len(s) - n) + s[len(s) - n :] for s, n in zip(seqs, n_scored, strict=True)
                ]
                labels = pad_rows(scored, IGNORE, left=True)
                device = self.model.device
                out = self.model(ids.to(device), mask.to(device), labels.to(device))
                logprob = out.token_logprobs.sum(-1).tolist()
                greedy = (out.token_is_greedy | ~out.target_mask).all(-1).tolist()
                for row, (index, _) in enumerate(batch):
                    results[index] = (float(logprob[row]), bool(greedy[row]))
                bar.update(len(batch))
        return results

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        results = self._score(
            [(ctx, cont) for _, ctx, cont in requests], "latentmem loglikelihood", disable_tqdm
        )
        for (key, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of up to `max_length` tokens that each see
        as much preceding text as fits (lm-eval's rolling-window rule); the first token is predicted from
        the prefix token."""
        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, request in enumerate(requests):
            (text,) = request.args
            for window in get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 1,  # + its one context token = a whole window of max_length
                context_len=1,
            ):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(
            owner, self._score(windows, "latentmem rolling", disable_tqdm), strict=True
        ):
            totals[i] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Batched MemGen generation per request's gen_kwargs (`until`, `max_gen_toks`, `do_sample`,
        `temperature`, `top_k`, `top_p`), cut at the first `until` string (EOS always included)."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        eos = self.tokenizer.decode([self.eot_token_id])
        generator = torch.Generator(device=self.model.device).manual_seed(self.seed)
        with tqdm(total=len(requests), desc="latentmem generate_until", disable=disable_tqdm) as bar:
            for indices in groups.values():
                kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_new_tokens)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                config = self._generation_config(kwargs)
                budget = self.max_length - config.max_new_tokens
                if budget < 1:
                    raise LatentMemError(
                        f"max_gen_toks={config.max_new_tokens} leaves no room for a prompt within "
                        f"max_length={self.max_length} tokens"
                    )
                contexts = [self.tok_encode(requests[i].args[0])[-budget:] for i in indices]
                for batch in _batches(
                    list(zip(indices, contexts, strict=True)), self.batch_size, key=lambda x: len(x[1])
                ):
                    rows = [item for _, item in batch]
                    texts = self._generate([ctx for _, ctx in rows], config, generator)
                    for (index, _), text in zip(rows, texts, strict=True):
                        cut = min((pos for s in until if s and (pos := text.find(s)) >= 0), default=len(text))
                        results[index] = text[:cut]
                        self.cache_hook.add_partial("generate_until", requests[index].args, results[index])
                    bar.update(len(batch))
        return results

    @staticmethod
    def _generation_config(kwargs: dict[str, Any]) -> GenerationConfig:
        """lm-eval's normalised gen_kwargs → our GenerationConfig (greedy unless do_sample)."""
        do_sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0.0) > 0
        sampling = (
            SamplingConfig(
                do_sample=True,
                temperature=float(kwargs["temperature"]),
                top_k=int(kwargs.get("top_k") or 0),
                top_p=float(kwargs.get("top_p") or 1.0),
            )
            if do_sample
            else SamplingConfig()
        )
        return GenerationConfig(max_new_tokens=int(kwargs["max_gen_toks"]), sampling=sampling)

    def _generate(
        self, contexts: list[list[int]], config: GenerationConfig, generator: torch.Generator
    ) -> list[str]:
        """Decoded completions (special tokens dropped) of left-padded `contexts`."""
        ids, mask = left_padded(contexts, self.tokenizer.pad_token_id)
        result = self.model.generate(ids, mask, config, generator=generator)
        return [
            self.tokenizer.decode(result.sequences[row, : int(result.lengths[row])], skip_special_tokens=True)
            for row in range(len(contexts))
        ]


def main() -> None:
    """lm-eval's command line with the `latentmem` model registered (`python -m` this module)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
