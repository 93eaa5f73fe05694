"""Training recall memory in the seed's two steps, with the reasoner's base weights frozen.

Step 1 (`train_step1`): make the hidden state at `<recall>` a query that finds the right memory. Either
`contrastive` (InfoNCE: cross-entropy of the scaled cosine logits over the whole bank against the fact's
own entry) or the seed's `mse` (regress the head's output onto the fact's vector; no negatives, no scale).

Step 2 (`train_step2`): teach decoding from an injected memory on the per-epoch resampled mixture of
`MixedRecallData`, with the head's InfoNCE kept on at the `<recall>` of `memory_full` rows (the only ones
whose memory is the one the context asks for: `Sample.trains_head`) so that the query stays aligned while
LoRA (if any) moves the hidden states. `memory_front` memories are random, and an InfoNCE there would pull
the query towards noise.

Besides recall@1, the metrics report how often the greedy first reply token is `<recall>`
(`first_token_recall_rate`) on the held-out general questions, before and after training, and on the fact
questions: step 2 must teach recalling on facts without teaching recalling on everything.

`step2.eval_every` adds the curve of decoding against steps: every so many steps the loop's evaluation
(`answer_probe`) answers the facts' held-out paraphrases with `<recall>` forced and logs
`probe_answer_accuracy` and `probe_recall_at_1`. `memory_slots` m > 1 makes each memory m input embeddings
(m consecutive `<|memory_pad|>`, one projection of one vector), for memories one embedding cannot carry.

Do no harm and its validation: `step2.retention_kl` adds the KL to the base model on base text
(`base_kl`), and `num_val_general` general questions beyond the training and test ones
(`validation_general`) are answered before training, by the probe (`probe_val_retention`) and at the end
(`val_retention`), so that settings such as that weight are chosen without the test questions. On SmolLM2
(issue 14) retention stayed at the base's with the KL at weight 1.0 over 80 steps (0.62 vs 0.62 on the test
questions, 0.50 vs 0.50 on the validation ones); without it validation retention fell to 0.12 at step 40
and ended at 0.44. `step1.extra_facts`
fits the head to more facts than the bank holds (`auxiliary_facts`), so that its query finds memories
written after training (recall@1 on 12 new facts 0.00 -> 1.00 after step 1 alone with 300 extra facts).
`step2.extra_facts` decodes more facts than the bank holds in step 2 (the same stream, the same
vectors), so that reading a memory cannot be naming one of a few; on SmolLM2 it taught no reading in 400
steps over 1012 facts (values collapsed to one per kind; README, issue 14), so it defaults to 0.

Trainable: the recall tokens' embedding rows, the memory head, the projector and an optional LoRA
(`RecallModel`). Every other weight of the reasoner is frozen. `latentmem train recall --config FILE` runs
`run`.

The loop. Each step is a run of the shared `training.loop.Trainer` (data order, accumulation, processes,
checkpoints, resume, progress) over the one `RecallModel`, in its own folder `<output_dir>/step1`,
`<output_dir>/step2` (`recall.config.RecallStep`); the steps' micro-steps return losses already divided by the whole
optimiser step's normaliser (facts for step 1, supervised tokens and head rows for step 2), so the loss of
a step is the batch mean it always was, however the batch is spread. Step 2's rows are the samples of one
epoch: a step lies in one epoch (`samples_per_epoch` is a multiple of `batch_size`) and its micro-steps
draw from `MixedRecallData.epoch` of that epoch, a pure function of (seed, epoch), so a resumed run sees
the samples an uninterrupted one would. Both steps use AdamW at a constant learning rate without gradient
clipping, and without weight decay: the embedding matrices train whole (their gradients masked to the
recall rows), and decoupled decay would shrink the frozen vocabulary. The run folder holds config.yaml,
run.json, the trained recall memory and bank, and a metrics.jsonl of both steps' lines (`phase`: step1,
step2) and the final metrics (`phase`: final), rewritten whole at the end so that a resumed run holds one
copy of each.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate import PartialState
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.decoding import IGNORE, positions_from_valid
from latentmem.errors import ConfigError
from latentmem.memgen.harm import kl_to_plain
from latentmem.models import load_model
from latentmem.recall.bank import MemoryBank
from latentmem.recall.config import RecallTrainConfig, Step1Config, Step2Config
from latentmem.recall.data import (
    QA,
    Fact,
    MixedRecallData,
    Sample,
    auxiliary_facts,
    general_task,
    make_facts,
    split_general,
)
from latentmem.recall.generate import RecallGenerator
from latentmem.recall.inject import inject
from latentmem.recall.memory import RecallMemory, RecallModel
from latentmem.recall.tokens import RECALL, NewRowTraining
from latentmem.recall.writer import HiddenStateEncoder, SentenceEncoder, write_memories
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything
from latentmem.training.loop import Job, Metrics, StepContext, Trainer, launch
from latentmem.training.sharding import fsdp_requested


# ---- shared pieces ---------------------------------------------------------------------------------
def recall_prompts(tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]) -> list[str]:
    """Chat prompts ending in `<recall>`: the state at which the memory head reads its query."""
    return [render_chat(tokenizer, q) + RECALL for q in questions]


def recall_hidden(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]
) -> torch.Tensor:
    """Last-layer hidden states at `<recall>` after each question: (B, D), differentiable."""
    enc = tokenizer(
        recall_prompts(tokenizer, questions), return_tensors="pt", padding=True, add_special_tokens=False
    )
    enc = enc.to(model.device)
    out = model(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        position_ids=positions_from_valid(enc.attention_mask.bool()),
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return out.hidden_states[-1][:, -1]  # left padding: the last column is every row's <recall>


@torch.no_grad()
def recall_at_1(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    memory: RecallMemory,
    vectors: torch.Tensor,
    questions: Sequence[str],
    batch_size: int = 32,
    *,
    first: int = 0,
) -> float:
    """Fraction of questions i whose top memory-head logit is memory `first` + i. vectors: the bank (N, M)."""
    hits = 0
    for s in range(0, len(questions), batch_size):
        hidden = recall_hidden(model, tokenizer, questions[s : s + batch_size])
        best = memory.head.logits(hidden, vectors).argmax(-1).cpu()
        hits += int((best == torch.arange(first + s, first + s + len(best))).sum())
    return hits / len(questions)


@torch.no_grad()
def first_token_recall_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    recall_id: int,
    questions: Sequence[str],
    batch_size: int = 32,
) -> float:
    """Fraction of `questions` whose greedy first reply token is `<recall>` (`recall_id`): how often the
    model opens its reply with a recall when it may (`RecallGenerator(..., recall="model")`)."""
    hits = 0
    for s in range(0, len(questions), batch_size):
        prompts = [render_chat(tokenizer, q) for q in questions[s : s + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        logits = model(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            position_ids=positions_from_valid(enc.attention_mask.bool()),
            logits_to_keep=1,
        ).logits[:, -1]
        hits += int((logits.argmax(-1) == recall_id).sum())
    return hits / len(questions)


def build_recall_model(cfg: RecallTrainConfig, device: torch.device, memory_dim: int | None) -> RecallModel:
    """`cfg.model` with fresh recall memory (`memory_dim`: the encoder's; None: the model's hidden size,
    that of `HiddenStateEncoder`), every base weight frozen, and a fresh LoRA when `cfg.lora.r` > 0. Seeded,
    so every process builds identical initial weights."""
    model, tokenizer = load_model(cfg.model, device=device, seed=cfg.seed)
    dim = memory_dim or model.get_input_embeddings().embedding_dim
    memory = RecallMemory.attach(
        model, tokenizer, dim, seed=cfg.seed, slots=cfg.memory_slots, projector_width=cfg.projector_width
    )
    model.requires_grad_(False)
    seed_everything(cfg.seed)  # the LoRA's initial weights
    lm = get_peft_model(model, cfg.lora.peft_config()) if cfg.lora.r else model
    return RecallModel(lm, tokenizer, memory, NewRowTraining(model, memory.tokens))


# ---- step 1 ----------------------------------------------------------------------------------------
def train_step1(
    job: Job[RecallModel], facts: Sequence[Fact], vectors: torch.Tensor, settings: Step1Config
) -> None:
    """Teach the `<recall>` query to find each fact's memory (vectors (N, M), row i = facts[i]; the
    contrast is over all N, the bank's facts and any `step1.extra_facts`). The rows of the loop are the
    facts; a step's loss is the mean over its facts."""
    model = job.model
    head = model.memory.head
    frozen = None
    if not settings.train_model:  # the head alone learns, on hidden states that do not change
        with torch.no_grad():
            frozen = torch.cat(
                [
                    recall_hidden(model.lm, model.tokenizer, [f.question for f in facts[s : s + 32]])
                    for s in range(0, len(facts), 32)
                ]
            )

    def micro_step(ctx: StepContext) -> Metrics:
        idx = ctx.indices
        if frozen is None:
            hidden = recall_hidden(model.lm, model.tokenizer, [facts[i].question for i in idx])
        else:
            hidden = frozen[idx]
        target = torch.tensor(idx, device=hidden.device)
        if settings.objective == "contrastive":
            summed = F.cross_entropy(head.logits(hidden, vectors), target, reduction="sum")
        else:  # the mean over the vector's M entries, as `F.mse_loss` takes it
            query = head.raw_query(hidden)
            summed = F.mse_loss(query, vectors[target].to(query), reduction="sum") / vectors.shape[1]
        loss = summed / len(ctx.step_indices)  # the mean over the whole step's facts
        loss.backward()
        return {"loss": loss.item()}

    Trainer(job, n_rows=len(facts)).fit(micro_step, derive=lambda _: {"scale": head.scale.item()})


# ---- step 2 ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    labels: torch.Tensor  # (B, T), IGNORE on prompts, pads, <|memory_pad|>s and memory_front's <recall>
    attention_mask: torch.Tensor  # (B, T)
    memories: torch.Tensor  # (B,) memory index at the row's pads, -1 for none
    head_rows: torch.Tensor  # (B,) bool, the rows whose <recall> trains the memory head (Sample.trains_head)


def collate(samples: Sequence[Sample], pad_id: int) -> Batch:
    T = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), T), pad_id)
    labels = torch.full((len(samples), T), IGNORE)
    mask = torch.zeros(len(samples), T, dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(s.input_ids), torch.tensor(s.labels), 1
    return Batch(
        ids,
        labels,
        mask,
        torch.tensor([s.memory for s in samples]),
        torch.tensor([s.trains_head for s in samples], dtype=torch.bool),
    )


def supervised_tokens(sample: Sample) -> int:
    """Tokens of `sample` the token loss scores: those with a label, less the first (nothing predicts it)."""
    return sum(label != IGNORE for label in sample.labels[1:])


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """() summed cross-entropy of logits (B, T, V) at t predicting labels (B, T) at t+1, IGNORE skipped."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


def base_positions(input_ids: torch.Tensor, mask: torch.Tensor, recall_id: int) -> torch.Tensor:
    """(B, T-1) bool: the positions t whose next token t+1 is base text, i.e. valid with no `<recall>` at
    or before t+1: the whole of an sft_only row, the prompt of a memory row. There the frozen base model's
    prediction is the one to keep; the position that predicts `<recall>` itself is not one of them."""
    return (mask.bool() & ((input_ids == recall_id).cumsum(1) == 0))[:, 1:]


def base_tokens(sample: Sample, recall_id: int) -> int:
    """How many `base_positions` `sample` has (its tokens before `<recall>`, less the first)."""
    ids = sample.input_ids
    return (ids.index(recall_id) if recall_id in ids else len(ids)) - 1


def base_kl(model: nn.Module, memory: RecallMemory, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """() summed KL(base || model) over `base_positions`, `logits` (B, T, V) being the model's own.

    The base is `model` with its LoRA disabled (a plain model: itself), without gradients, over the
    vocabulary less the recall tokens (a model without recall memory has none: mass the model puts on
    `<recall>` there counts against it). `memgen.harm.kl_to_plain`, the KL of the MemGen warm-up, per token.
    """
    ids, mask = batch.input_ids.to(logits.device), batch.attention_mask.to(logits.device)
    at = base_positions(ids, mask, memory.tokens.recall_id)
    keep = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(memory.tokens.ids)] = False
    with torch.no_grad(), model.disable_adapter() if isinstance(model, PeftModel) else nullcontext():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_valid(mask.bool()))
        teacher = plain.logits[:, :-1][at][:, keep].float().log_softmax(-1)
    student = logits[:, :-1][at].float().log_softmax(-1)[:, keep]
    return kl_to_plain(teacher, student).sum()


class Step2Losses(NamedTuple):
    """() sums over one batch: token NLL, head NLL, and the KL to the base (0 unless asked for)."""

    token: torch.Tensor
    head: torch.Tensor
    kl: torch.Tensor


def step2_losses(
    model: nn.Module,
    memory: RecallMemory,
    batch: Batch,
    vectors: torch.Tensor,
    *,
    retention: bool = False,
) -> Step2Losses:
    """() summed token NLL, head NLL and (`retention`) `base_kl` of one batch, with each row's memory
    projected into `memory.slots` embeddings and injected at its as many consecutive `<|memory_pad|>`; the
    head NLL covers `batch.head_rows` only (zero when the batch has none).

    The forward is the training twin of `RecallGenerator`: the same `inject`, the same position ids
    (`positions_from_valid`) and the same last-layer hidden state at `<recall>` for the head.
    """
    device = vectors.device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    tok = memory.tokens
    embeds = model.get_input_embeddings()(ids)
    slots = ids == tok.pad_id
    slots &= mask.bool()
    with_memory = batch.memories.to(device)
    embeds = inject(embeds, slots, memory.projector(vectors[with_memory[with_memory >= 0]]))
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions_from_valid(mask.bool()),
        output_hidden_states=True,
    )
    token_nll = next_token_nll(out.logits, batch.labels.to(device))
    # the head reads the hidden state at the <recall> right before each memory's first pad, on head rows
    first = slots.clone()
    first[:, 1:] &= ~slots[:, :-1]
    rows, cols = first.nonzero(as_tuple=True)
    keep = batch.head_rows.to(device)[rows]
    rows, cols = rows[keep], cols[keep]
    hidden = out.hidden_states[-1][rows, cols - 1]
    head_nll = (
        F.cross_entropy(memory.head.logits(hidden, vectors), with_memory[rows], reduction="sum")
        if len(rows)
        else token_nll.new_zeros(())
    )
    kl = base_kl(model, memory, batch, out.logits) if retention else token_nll.new_zeros(())
    return Step2Losses(token_nll, head_nll, kl)


def validation_general(cfg: RecallTrainConfig) -> list[QA]:
    """The `num_val_general` general questions that follow the first `num_general` (`general_task` is
    prefix-stable): disjoint from the sft_only pool and from the held-out retention probe."""
    return general_task(cfg.num_general + cfg.num_val_general, seed=cfg.seed)[cfg.num_general :]


def general_accuracy(gen: RecallGenerator, general: Sequence[QA], max_new_tokens: int) -> float:
    """Greedy replies to `general` (the model decides whether to recall), correct when the answer string
    is in the reply: the retention measure of the evaluation, on any split."""
    out = gen.generate(gen.render([q.question for q in general]), max_new_tokens=max_new_tokens)
    return sum(q.answer.lower() in t.lower() for q, t in zip(general, out.texts, strict=True)) / len(general)


def answer_probe(
    model: RecallModel,
    bank: MemoryBank,
    facts: Sequence[Fact],
    max_new_tokens: int,
    validation: Sequence[QA] = (),
) -> Callable[[list[int]], Metrics]:
    """The loop's evaluation of step 2 over len(facts) + len(validation) rows: for this process's fact
    rows, greedy replies to the facts' paraphrases with `<recall>` forced (the memory chosen by the head
    from `bank`); for its validation rows, replies to those general questions with the model deciding.
    Returns the additive `probe_answer_accuracy` (hits / all facts), `probe_recall_at_1` (right memory /
    all facts) and, with `validation`, `probe_val_retention` (hits / all validation questions): retention
    against steps on the split that chooses step-2 settings."""

    def evaluate(rows: list[int]) -> Metrics:
        gen = RecallGenerator(model.lm, model.tokenizer, model.memory, bank)
        fact_rows = [i for i in rows if i < len(facts)]
        metrics: Metrics = {"probe_answer_accuracy": 0.0, "probe_recall_at_1": 0.0}
        if fact_rows:
            prompts = gen.render([facts[i].paraphrase for i in fact_rows], recall_first=True)
            out = gen.generate(prompts, max_new_tokens=max_new_tokens)
            hits = sum(
                facts[i].answer.lower() in t.lower() for i, t in zip(fact_rows, out.texts, strict=True)
            )
            right = sum(
                bool(ev) and ev[0].memory_id == i for i, ev in zip(fact_rows, out.recalls, strict=True)
            )  # bank ids are fact indices: the facts were written first, in order
            metrics = {"probe_answer_accuracy": hits / len(facts), "probe_recall_at_1": right / len(facts)}
        if validation:
            mine = [validation[i - len(facts)] for i in rows if i >= len(facts)]
            share = len(mine) / len(validation)  # additive over processes
            acc = general_accuracy(gen, mine, max_new_tokens) if mine else 0.0
            metrics["probe_val_retention"] = acc * share
        return metrics

    return evaluate


def train_step2(
    job: Job[RecallModel],
    data: MixedRecallData,
    vectors: torch.Tensor,
    settings: Step2Config,
    probe: Callable[[list[int]], Metrics] | None = None,
    n_probe: int = 0,
) -> None:
    """Decoding from injected memories on the per-epoch resampled mixture. The rows of the loop are the
    samples of an epoch; a step's token loss is the mean over its supervised tokens, its head loss the mean
    over its head rows (`Sample.trains_head`), its KL the mean over its `base_tokens`, and it trains on
    their sum, the head's and the KL's weighted. `probe`
    (over `n_probe` rows, every `settings.eval_every` steps) is the loop's evaluation (`answer_probe`)."""
    model = job.model
    pad_id, recall_id = model.tokenizer.pad_token_id, model.memory.tokens.recall_id
    epoch = functools.lru_cache(maxsize=1)(data.epoch)  # drawn once, not once per micro-step

    def micro_step(ctx: StepContext) -> Metrics:
        # the epoch this step falls in: the loop takes `batch_size` rows per step, `samples_per_epoch` a
        # multiple of it, so the step's rows all index this epoch's samples
        samples = epoch(ctx.step * settings.batch_size // settings.samples_per_epoch)
        whole = [samples[i] for i in ctx.step_indices]
        n_tokens = sum(supervised_tokens(s) for s in whole)
        n_head = max(sum(s.trains_head for s in whole), 1)  # no head rows: the head NLL is 0
        n_base = sum(base_tokens(s, recall_id) for s in whole)
        batch = collate([samples[i] for i in ctx.indices], pad_id)
        losses = step2_losses(model.lm, model.memory, batch, vectors, retention=settings.retention_kl > 0)
        token_loss, head_loss = losses.token / n_tokens, losses.head / n_head
        kl = losses.kl / n_base
        (token_loss + settings.head_loss_weight * head_loss + settings.retention_kl * kl).backward()
        return {"loss": token_loss.item(), "head_loss": head_loss.item(), "base_kl": kl.item()}

    use_probe = probe is not None and settings.eval_every > 0
    Trainer(job, n_rows=settings.samples_per_epoch).fit(
        micro_step, probe if use_probe else None, n_probe if use_probe else 0
    )


# ---- the whole recipe ------------------------------------------------------------------------------
@dataclass
class TrainedRecall:
    model: PreTrainedModel  # LoRA (if any) merged
    tokenizer: PreTrainedTokenizerBase
    memory: RecallMemory
    bank: MemoryBank
    facts: list[Fact]
    metrics: dict[str, float]
    run: Path  # the run folder
    trainable_params: int  # `RecallModel.num_trainable`: rows, head, projector and LoRA


def train_recall(cfg: RecallTrainConfig, facts: Sequence[Fact] | None = None) -> TrainedRecall:
    """Load the model, write the facts into a bank, run both steps in the run folder `cfg.output_dir`
    (resuming where a checkpoint is); save the recall memory and bank there and return them, LoRA merged.

    `facts`: what to store and train on, `cfg.num_facts` of them (e.g. a task's training examples, as the
    `recall` method of `latentmem compare` passes them); default `make_facts(cfg.num_facts, seed=cfg.seed)`.
    """
    if facts is not None and len(facts) != cfg.num_facts:
        raise ConfigError(
            f"num_facts: is {cfg.num_facts} but {len(facts)} facts were given; set num_facts={len(facts)}"
        )
    if fsdp_requested():
        raise ConfigError(
            "recall training shards nothing: every process holds the whole (small) model; launch it without "
            "an FSDP config (accelerate launch --multi_gpu, or one process)"
        )
    seed_everything(cfg.seed)
    facts = list(facts) if facts is not None else make_facts(cfg.num_facts, seed=cfg.seed)
    sft_pool, held_out = split_general(general_task(cfg.num_general, seed=cfg.seed))
    validation = validation_general(cfg)
    sentence = SentenceEncoder() if cfg.encoder == "minilm" else None  # its dimension sizes the memory
    memory_dim = sentence.dim if sentence else None
    # one model for both steps: each step's job trains its own parts of it
    shared = functools.cache(functools.partial(build_recall_model, cfg, memory_dim=memory_dim))
    jobs = {
        step.step: launch(step, step.train.batch_size, lambda s, device: shared(device).only(*s.parts))
        for step in cfg.steps()
    }
    dist = next(iter(jobs.values())).dist
    model = shared(dist.device)
    tok, memory = model.tokenizer, model.memory
    run = RunDir.create(cfg.output_dir, cfg, cfg.seed) if dist.is_main else RunDir(Path(cfg.output_dir))

    encoder = sentence or HiddenStateEncoder(model.reasoner, tok)
    bank = MemoryBank(encoder.dim)
    write_memories(bank, encoder, [f.text for f in facts], [{"answer": f.answer} for f in facts])
    # sft_only targets: the base model's own greedy replies (the fresh LoRA changes nothing yet), so that
    # sft_only teaches it to stay itself
    base = RecallGenerator(model.reasoner, tok, memory, recall="never")
    replies = base.generate(
        base.render([q.question for q in sft_pool]), max_new_tokens=cfg.reply_tokens
    ).texts
    vectors = bank.matrix()[1].to(model.device)
    questions = [f.question for f in facts]
    paraphrases = [f.paraphrase for f in facts]
    general_questions = [q.question for q in held_out]
    metrics = {
        "recall_at_1_before": recall_at_1(model.lm, tok, memory, vectors, questions),
        # the base model's accuracy on the validation split: what retention there must stay at
        "val_retention_base": (
            general_accuracy(base, validation, cfg.eval_max_new_tokens) if validation else float("nan")
        ),
        "general_recall_rate_before": first_token_recall_rate(
            model.lm, tok, memory.tokens.recall_id, general_questions
        ),
    }
    t0 = time.perf_counter()
    # the auxiliary facts of the steps that run, one stream: each step takes its first `extra_facts`
    wanted = [getattr(cfg, name).extra_facts for name in jobs]
    extra = auxiliary_facts(max(wanted, default=0), cfg.num_facts, seed=cfg.seed)
    all_vectors = vectors
    if extra:  # written as the bank is, but into a bank of their own: never recalled
        extra_bank = MemoryBank(encoder.dim)
        write_memories(extra_bank, encoder, [f.text for f in extra])
        all_vectors = torch.cat([vectors, extra_bank.matrix()[1].to(vectors)])
    if "step1" in jobs:
        k = cfg.num_facts + cfg.step1.extra_facts
        train_step1(jobs["step1"], [*facts, *extra][:k], all_vectors[:k], cfg.step1)
    metrics["step1_recall_at_1"] = recall_at_1(model.lm, tok, memory, vectors, questions)
    metrics["step1_recall_at_1_paraphrase"] = recall_at_1(model.lm, tok, memory, vectors, paraphrases)
    if "step2" in jobs:
        k = cfg.num_facts + cfg.step2.extra_facts
        data = MixedRecallData(
            tok,
            memory.tokens,
            [*facts, *extra][:k],
            sft_pool,
            replies,
            samples_per_epoch=cfg.step2.samples_per_epoch,
            max_tokens=cfg.step2.max_tokens,
            mix=cfg.step2.mix,
            seed=cfg.seed,
            slots=cfg.memory_slots,
        )
        probe = answer_probe(model, bank, facts, cfg.eval_max_new_tokens, validation)
        train_step2(jobs["step2"], data, all_vectors[:k], cfg.step2, probe, len(facts) + len(validation))
    # each step's lines, read back from its run folder: complete when the step resumed from a checkpoint
    lines = {name: job.run.metrics() for name, job in jobs.items()}
    s1 = [m["loss"] for m in lines.get("step1", []) if "loss" in m]  # the probe's step-0 line has none
    s2 = [m["loss"] for m in lines.get("step2", []) if "loss" in m]
    metrics.update(
        train_seconds=time.perf_counter() - t0,
        step1_loss_first=s1[0] if s1 else float("nan"),
        step1_loss_last=s1[-1] if s1 else float("nan"),
        step2_loss_first=s2[0] if s2 else float("nan"),
        step2_loss_last=s2[-1] if s2 else float("nan"),
        recall_at_1=recall_at_1(model.lm, tok, memory, vectors, questions),
        recall_at_1_paraphrase=recall_at_1(model.lm, tok, memory, vectors, paraphrases),
        general_recall_rate=first_token_recall_rate(
            model.lm, tok, memory.tokens.recall_id, general_questions
        ),
        fact_recall_rate=first_token_recall_rate(model.lm, tok, memory.tokens.recall_id, questions),
        val_retention=(
            general_accuracy(
                RecallGenerator(model.lm, tok, memory, bank), validation, cfg.eval_max_new_tokens
            )
            if validation
            else float("nan")
        ),
    )
    model.rows.remove()
    model.eval()
    if dist.is_main:
        model.save_pretrained(run.path)
        bank.save(run.path / "bank")
        summary = [{"phase": name, **m} for name, ms in lines.items() for m in ms]
        summary.append({"phase": "final", **metrics})
        run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in summary))
    dist.barrier()
    trainable = model.num_trainable()  # before the merge, which takes the LoRA's own weights away
    merged = model.lm.merge_and_unload() if isinstance(model.lm, PeftModel) else model.lm
    return TrainedRecall(merged.eval(), tok, memory, bank, facts, metrics, run.path, trainable)


def run(config_path: str, overrides: list[str]) -> Path:
    """`latentmem train recall --config FILE [overrides]`: train, save, print metrics; returns the run folder."""
    trained = train_recall(RecallTrainConfig.from_yaml(config_path, overrides))
    if PartialState().is_main_process:  # once, under `accelerate launch`
        for key, value in trained.metrics.items():
            print(f"{key:>30}: {value:.4f}")
    return trained.run
