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

Trainable: the recall tokens' embedding rows, the memory head, the projector and an optional LoRA. Every
other weight of the reasoner is frozen. `latentmem train recall --config FILE` runs `run`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import render_chat
from latentmem.config import Config, require
from latentmem.decoding import IGNORE, positions_from_valid
from latentmem.models import load_model
from latentmem.recall.bank import MemoryBank
from latentmem.recall.data import (
    Fact,
    MixedRecallData,
    Sample,
    general_task,
    make_facts,
    split_general,
)
from latentmem.recall.generate import RecallGenerator
from latentmem.recall.inject import inject
from latentmem.recall.memory import ADAPTER, RecallMemory
from latentmem.recall.tokens import RECALL, NewRowTraining
from latentmem.recall.writer import HiddenStateEncoder, MemoryEncoder, SentenceEncoder, write_memories
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything


# ---- configuration ---------------------------------------------------------------------------------
@dataclass
class Step1Config(Config):
    objective: Literal["contrastive", "mse"] = "contrastive"
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    # False: train only the head, on `<recall>` hidden states computed once without gradients (no backward
    # through the reasoner: the cheap choice on CPU); the `<recall>` row and LoRA then learn in step 2.
    train_model: bool = True

    def validate(self) -> None:
        require(self.steps >= 0, "step1.steps", f"must be >= 0, got {self.steps}")
        require(self.batch_size > 0, "step1.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.lr > 0, "step1.lr", f"must be > 0, got {self.lr}")


@dataclass
class Step2Config(Config):
    """Step 2: `epochs` x `samples_per_epoch` samples, redrawn every epoch, none longer than `max_tokens`.

    `mix` weighs the three kinds of `latentmem.recall.data`: memory_front (decode a random memory after
    filler; `<recall>` unlabelled), memory_full (recall on a fact question, then answer) and sft_only (the
    negatives: general questions answered directly). sft_only must weigh > 0 whenever memory_full does:
    it is the only kind that teaches when not to recall. The head's InfoNCE, scaled by
    `head_loss_weight`, applies to memory_full rows only.
    """

    epochs: int = 2
    samples_per_epoch: int = 64
    batch_size: int = 8
    lr: float = 1e-3
    max_tokens: int = 160  # samples longer than this are skipped and redrawn
    mix: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # memory_front, memory_full, sft_only
    head_loss_weight: float = 1.0

    def validate(self) -> None:
        require(self.epochs >= 0, "step2.epochs", f"must be >= 0, got {self.epochs}")
        require(self.samples_per_epoch > 0, "step2.samples_per_epoch", "must be > 0")
        require(self.batch_size > 0, "step2.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.lr > 0, "step2.lr", f"must be > 0, got {self.lr}")
        require(self.max_tokens > 8, "step2.max_tokens", f"must be > 8, got {self.max_tokens}")
        require(
            len(self.mix) == 3 and min(self.mix) >= 0 and sum(self.mix) > 0,
            "step2.mix",
            f"needs three non-negative weights (memory_front, memory_full, sft_only), got {self.mix}",
        )
        require(
            self.mix[2] > 0 or self.mix[1] == 0,
            "step2.mix",
            f"sft_only (the third weight) must be > 0 when memory_full is: without these negatives step 2 "
            f"teaches recalling on every question; got {self.mix}",
        )
        require(self.head_loss_weight >= 0, "step2.head_loss_weight", "must be >= 0")


@dataclass
class LoraSettings(Config):
    r: int = 0  # 0 = no LoRA: only the token rows, head and projector train
    alpha: int = 16
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self) -> None:
        require(self.r >= 0, "lora.r", f"must be >= 0 (0 disables LoRA), got {self.r}")
        require(bool(self.targets), "lora.targets", "name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class RecallTrainConfig(Config):
    model: str = "tiny-qwen2"
    seed: int = 0
    output_dir: str = "runs/recall"
    encoder: Literal["hidden", "minilm"] = "hidden"
    num_facts: int = 16
    num_general: int = 32  # general-task questions: half for sft_only, half held out (`split_general`)
    reply_tokens: int = 24  # length of the base model's own replies used as sft_only targets
    eval_max_new_tokens: int = 48
    step1: Step1Config = field(default_factory=Step1Config)
    step2: Step2Config = field(default_factory=Step2Config)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        require(self.num_facts >= 2, "num_facts", f"needs at least 2 facts to contrast, got {self.num_facts}")
        require(self.num_general >= 4, "num_general", f"must be >= 4, got {self.num_general}")
        require(self.reply_tokens > 0, "reply_tokens", "must be > 0")
        require(self.eval_max_new_tokens > 0, "eval_max_new_tokens", "must be > 0")


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
) -> float:
    """Fraction of questions i whose top memory-head logit is memory i. vectors: the bank (N, M)."""
    hits = 0
    for s in range(0, len(questions), batch_size):
        hidden = recall_hidden(model, tokenizer, questions[s : s + batch_size])
        best = memory.head.logits(hidden, vectors).argmax(-1).cpu()
        hits += int((best == torch.arange(s, s + len(best))).sum())
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


def encoder_for(
    cfg: RecallTrainConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> MemoryEncoder:
    return SentenceEncoder() if cfg.encoder == "minilm" else HiddenStateEncoder(model, tokenizer)


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> nn.Module:
    """Wrap `model` in a PEFT LoRA (base weights frozen by PEFT) when `settings.r > 0`."""
    if settings.r == 0:
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, target_modules=list(settings.targets), lora_dropout=0.0
    )
    return get_peft_model(model, lora)


def _optimizer(
    groups: list[list[nn.Parameter]], row_params: list[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """AdamW over `groups`; the embedding matrices (only their recall rows get gradients) without weight
    decay, since decoupled decay would otherwise shrink the frozen vocabulary rows too."""
    params = [p for g in groups for p in g if p.requires_grad]
    return torch.optim.AdamW([{"params": params}, {"params": row_params, "weight_decay": 0.0}], lr=lr)


# ---- step 1 ----------------------------------------------------------------------------------------
def train_step1(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    memory: RecallMemory,
    vectors: torch.Tensor,
    facts: Sequence[Fact],
    cfg: Step1Config,
    rows: NewRowTraining,
    lora_params: list[nn.Parameter],
    run: RunDir | None = None,
    seed: int = 0,
) -> list[float]:
    """Teach the `<recall>` query to find each fact's memory (vectors (N, M), row i = facts[i])."""
    if cfg.train_model:
        opt = _optimizer([list(memory.head.parameters()), lora_params], rows.parameters(), cfg.lr)
    else:
        opt = torch.optim.AdamW(memory.head.parameters(), lr=cfg.lr)
        with torch.no_grad():
            frozen = torch.cat(
                [
                    recall_hidden(model, tokenizer, [f.question for f in facts[s : s + cfg.batch_size]])
                    for s in range(0, len(facts), cfg.batch_size)
                ]
            )
    rng = random.Random(seed)
    losses = []
    for step in range(cfg.steps):
        idx = rng.sample(range(len(facts)), min(cfg.batch_size, len(facts)))
        if cfg.train_model:
            hidden = recall_hidden(model, tokenizer, [facts[i].question for i in idx])
        else:
            hidden = frozen[idx]
        target = torch.tensor(idx, device=hidden.device)
        if cfg.objective == "contrastive":
            loss = F.cross_entropy(memory.head.logits(hidden, vectors), target)
        else:
            loss = F.mse_loss(memory.head.raw_query(hidden), vectors[target].to(hidden))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if run is not None:
            run.log(phase="step1", step=step, loss=loss.item(), scale=memory.head.scale.item())
    return losses


# ---- step 2 ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    labels: torch.Tensor  # (B, T), IGNORE on prompts, pads, <|memory_pad|> and memory_front's <recall>
    attention_mask: torch.Tensor  # (B, T)
    memories: torch.Tensor  # (B,) memory index at the row's pad, -1 for none
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


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) at t predicting labels (B, T) at t+1, IGNORE skipped."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def step2_losses(
    model: nn.Module, memory: RecallMemory, batch: Batch, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token loss, head loss) of one batch, with each row's memory injected at its `<|memory_pad|>`;
    the head loss covers `batch.head_rows` only (zero when the batch has none).

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
    token_loss = next_token_loss(out.logits, batch.labels.to(device))
    # the head reads the hidden state at the <recall> right before each memory pad, on head rows only
    rows, cols = slots.nonzero(as_tuple=True)
    keep = batch.head_rows.to(device)[rows]
    rows, cols = rows[keep], cols[keep]
    hidden = out.hidden_states[-1][rows, cols - 1]
    head_loss = (
        F.cross_entropy(memory.head.logits(hidden, vectors), with_memory[rows])
        if len(rows)
        else token_loss.new_zeros(())
    )
    return token_loss, head_loss


def train_step2(
    model: nn.Module,
    memory: RecallMemory,
    data: MixedRecallData,
    vectors: torch.Tensor,
    cfg: Step2Config,
    rows: NewRowTraining,
    lora_params: list[nn.Parameter],
    pad_id: int,
    run: RunDir | None = None,
) -> list[float]:
    """Decoding from injected memories on the per-epoch resampled mixture. Returns per-batch token losses."""
    opt = _optimizer([list(memory.parameters()), lora_params], rows.parameters(), cfg.lr)
    losses = []
    for epoch in range(cfg.epochs):
        samples = data.epoch(epoch)
        for b in range(0, len(samples), cfg.batch_size):
            batch = collate(samples[b : b + cfg.batch_size], pad_id)
            token_loss, head_loss = step2_losses(model, memory, batch, vectors)
            loss = token_loss + cfg.head_loss_weight * head_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(token_loss.item())
            if run is not None:
                run.log(phase="step2", epoch=epoch, loss=token_loss.item(), head_loss=head_loss.item())
    return losses


# ---- the whole recipe ------------------------------------------------------------------------------
@dataclass
class TrainedRecall:
    model: PreTrainedModel  # LoRA (if any) merged
    tokenizer: PreTrainedTokenizerBase
    memory: RecallMemory
    bank: MemoryBank
    facts: list[Fact]
    metrics: dict[str, float]


def train_recall(cfg: RecallTrainConfig, run: RunDir | None = None) -> TrainedRecall:
    """Load the model, write the facts into a bank, run both steps; return everything, LoRA merged."""
    seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg.model, seed=cfg.seed)
    facts = make_facts(cfg.num_facts, seed=cfg.seed)
    sft_pool, held_out = split_general(general_task(cfg.num_general, seed=cfg.seed))
    encoder = encoder_for(cfg, model, tokenizer)
    bank = MemoryBank(encoder.dim)
    write_memories(bank, encoder, [f.text for f in facts], [{"answer": f.answer} for f in facts])
    memory = RecallMemory.attach(model, tokenizer, encoder.dim, seed=cfg.seed)
    # sft_only targets: the base model's own greedy replies, so that sft_only teaches it to stay itself
    base = RecallGenerator(model, tokenizer, memory, recall="never")
    replies = base.generate(
        base.render([q.question for q in sft_pool]), max_new_tokens=cfg.reply_tokens
    ).texts
    vectors = bank.matrix()[1].to(model.device)

    peft_model = add_lora(model, cfg.lora)
    rows = NewRowTraining(model, memory.tokens)
    lora_params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    memory.train()
    questions = [f.question for f in facts]
    paraphrases = [f.paraphrase for f in facts]
    general_questions = [q.question for q in held_out]
    metrics = {
        "recall_at_1_before": recall_at_1(peft_model, tokenizer, memory, vectors, questions),
        "general_recall_rate_before": first_token_recall_rate(
            peft_model, tokenizer, memory.tokens.recall_id, general_questions
        ),
    }
    t0 = time.perf_counter()
    s1 = train_step1(
        peft_model, tokenizer, memory, vectors, facts, cfg.step1, rows, lora_params, run, cfg.seed
    )
    metrics["step1_recall_at_1"] = recall_at_1(peft_model, tokenizer, memory, vectors, questions)
    metrics["step1_recall_at_1_paraphrase"] = recall_at_1(peft_model, tokenizer, memory, vectors, paraphrases)
    data = MixedRecallData(
        tokenizer,
        memory.tokens,
        facts,
        sft_pool,
        replies,
        samples_per_epoch=cfg.step2.samples_per_epoch,
        max_tokens=cfg.step2.max_tokens,
        mix=cfg.step2.mix,
        seed=cfg.seed,
    )
    s2 = train_step2(
        peft_model, memory, data, vectors, cfg.step2, rows, lora_params, tokenizer.pad_token_id, run
    )
    metrics.update(
        train_seconds=time.perf_counter() - t0,
        step1_loss_first=s1[0] if s1 else float("nan"),
        step1_loss_last=s1[-1] if s1 else float("nan"),
        step2_loss_first=s2[0] if s2 else float("nan"),
        step2_loss_last=s2[-1] if s2 else float("nan"),
        recall_at_1=recall_at_1(peft_model, tokenizer, memory, vectors, questions),
        recall_at_1_paraphrase=recall_at_1(peft_model, tokenizer, memory, vectors, paraphrases),
        general_recall_rate=first_token_recall_rate(
            peft_model, tokenizer, memory.tokens.recall_id, general_questions
        ),
        fact_recall_rate=first_token_recall_rate(peft_model, tokenizer, memory.tokens.recall_id, questions),
    )
    rows.remove()
    memory.eval()
    if run is not None:
        memory.save(run.path, model)
        if cfg.lora.r:
            peft_model.save_pretrained(run.path / ADAPTER)
    if cfg.lora.r:
        model = peft_model.merge_and_unload()
    return TrainedRecall(model.eval(), tokenizer, memory, bank, facts, metrics)


def run(config_path: str, overrides: list[str]) -> Path:
    """`latentmem train recall --config FILE [overrides]`: train, save, print metrics; returns the run folder."""
    cfg = RecallTrainConfig.from_yaml(config_path, overrides)
    run_dir = RunDir.create(Path(cfg.output_dir), cfg, cfg.seed)
    trained = train_recall(cfg, run_dir)
    trained.bank.save(run_dir.path / "bank")
    run_dir.log(phase="final", **trained.metrics)
    for key, value in trained.metrics.items():
        print(f"{key:>30}: {value:.4f}")
    return run_dir.path
