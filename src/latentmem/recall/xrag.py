"""xRAG-style injection (Cheng et al., 2024): a retrieved memory read as one embedding in the prompt.

The baseline recall memory is measured against (issue 14): the memory's retriever vector (MiniLM, the
retriever that also finds it) goes through a trained projector into the input embedding of one
`<|memory_pad|>` placed in the prompt, `Background: <|memory_pad|>` before the question. No `<recall>`
token and no memory head: the memory is chosen by retrieval (top-1 cosine over the bank) before the model
runs, and the model always reads one. The reasoner stays frozen; what trains is the projector (and the
optional LoRA that recall memory has too), through the same injection (`recall.inject`) and token loss
(`recall.train.step2_losses`) as recall memory's step 2, on two kinds of rows, as xRAG's two stages:

- `restate` (xRAG's paraphrase pretraining): `Background: <pad>` + "Restate the background." -> the
  memory's text, so that the projection carries the memory's content, not an index into the training set;
- `answer` (its instruction tuning): `Background: <pad>` + the question -> the task's target.

`restate_share` weighs the first kind; `extra_memories` adds restate rows over that many more invented
memories (never in the bank), as xRAG pretrains its projector on a corpus far larger than the task. Training runs on the shared `training.loop.Trainer` in
`output_dir` (config.yaml, metrics.jsonl, the projector under `model/`); generation is
`RecallGenerator.generate(..., prompt_memories=ids)`, whose prefill injects the same projection at the
prompt's pad, so training and generation read the memory alike (tested).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.chat import control_tokens, neutralize, render_chat
from latentmem.config import Config, require
from latentmem.models import load_model
from latentmem.recall.bank import MemoryBank
from latentmem.recall.config import LoraSettings
from latentmem.recall.data import Sample, auxiliary_facts, encode_sample
from latentmem.recall.generate import RecallGenerator, RecallOutput
from latentmem.recall.memory import RecallMemory, RecallModel
from latentmem.recall.tokens import MEMORY_PAD, NewRowTraining
from latentmem.recall.train import collate, step2_losses, supervised_tokens
from latentmem.recall.writer import MemoryEncoder, SentenceEncoder, write_memories
from latentmem.seeding import seed_everything
from latentmem.training.config import TrainConfig
from latentmem.training.loop import Metrics, StepContext, Trainer, launch

RESTATE = "Restate the background."


def xrag_prompt(tokenizer: PreTrainedTokenizerBase, question: str, slots: int = 1) -> str:
    """The user turn of an xRAG row: the memory's `slots` pads as the background, then the question (its
    control tokens neutralised: only these pads are memory slots). Render it with `allow=(MEMORY_PAD,)`."""
    return f"Background: {MEMORY_PAD * slots}\n\n{neutralize(question, control_tokens(tokenizer))}"


@dataclass
class XRAGConfig(Config):
    """What `train_xrag` trains (a `loop.LoopConfig`: `output_dir`, `seed`, `train`)."""

    model: str = "tiny-qwen2"
    seed: int = 0
    output_dir: str = "runs/xrag"
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    restate_share: float = 0.5  # share of rows that restate the memory (xRAG's paraphrase pretraining)
    projector_width: int = 0  # the projector's hidden width; 0 = the model's hidden size
    max_tokens: int = 160  # rows longer than this are an error (`XRAGData`)
    # restate rows over this many more memories (`recall.data.auxiliary_facts`: invented facts of other
    # templates, encoded alike, never in the bank): xRAG pretrains its projector on far more texts than a
    # task has, so that a projection carries any memory's content and not which training memory it is
    extra_memories: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)  # r = 0 (xRAG's choice): the projector alone

    def validate(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.restate_share < 1, "restate_share", f"must be in [0, 1), got {self.restate_share}")
        require(self.projector_width >= 0, "projector_width", f"must be >= 0, got {self.projector_width}")
        require(self.max_tokens > 8, "max_tokens", f"must be > 8, got {self.max_tokens}")
        require(self.extra_memories >= 0, "extra_memories", f"must be >= 0, got {self.extra_memories}")

    @property
    def train(self) -> TrainConfig:
        """Constant rate, no clipping, no weight decay, as recall training; every run starts fresh."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule="constant_with_warmup",
            max_grad_norm=0.0,
            resume=False,
        )

    @property
    def resumable_fields(self) -> frozenset[str]:
        return frozenset({"output_dir"})


@dataclass(frozen=True)
class XRAGRow:
    """One training row: its memory (`memory`, a bank index), its text, the question and the target."""

    memory: int
    text: str
    question: str
    target: str


class XRAGData:
    """The rows of every optimiser step: row i < len(rows) of the loop is `answer` row i, or a `restate`
    row of the same memory drawn with probability `restate_share` under (seed, step, i), a pure function of
    them so that any process layout sees the same rows; the rows after them restate the `extra` memories."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        memory: RecallMemory,
        rows: Sequence[XRAGRow],
        *,
        restate_share: float,
        max_tokens: int,
        seed: int,
        extra: Sequence[XRAGRow] = (),
    ) -> None:
        self.tokenizer, self.memory, self.rows, self.extra = tokenizer, memory, list(rows), list(extra)
        self.restate_share, self.max_tokens, self.seed = restate_share, max_tokens, seed

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    @functools.lru_cache(maxsize=4096)  # noqa: B019  (one instance per training run)
    def sample(self, step: int, i: int) -> Sample:
        row = self.rows[i] if i < len(self.rows) else self.extra[i - len(self.rows)]
        draw = random.Random((self.seed * 1_000_003 + step) * 65_537 + i).random()
        restate = i >= len(self.rows) or draw < self.restate_share
        question, reply, kind = (
            (RESTATE, row.text, "restate") if restate else (row.question, row.target, "answer")
        )
        sample = encode_sample(
            self.tokenizer,
            self.memory.tokens,
            xrag_prompt(self.tokenizer, question, self.memory.slots),
            reply,
            row.memory,
            kind,
            slots=self.memory.slots,
            allow=(MEMORY_PAD,),
        )
        require(
            len(sample.input_ids) <= self.max_tokens,
            "max_tokens",
            f"a {kind} row of {len(sample.input_ids)} tokens is longer than {self.max_tokens}; raise it",
        )
        return sample


@dataclass
class TrainedXRAG:
    model: PreTrainedModel  # LoRA (if any) merged
    tokenizer: PreTrainedTokenizerBase
    memory: RecallMemory  # its projector is the trained one; its head is unused
    bank: MemoryBank  # the memories, with the retriever's vectors
    encoder: MemoryEncoder  # the retriever: writes and searches the bank
    losses: list[float]
    run: Path
    trainable_params: int

    def generator(self) -> RecallGenerator:
        return RecallGenerator(self.model, self.tokenizer, self.memory, self.bank, recall="never")

    def retrieve(self, questions: Sequence[str]) -> list[int]:
        """The bank id of each question's top-1 memory (cosine of the retriever's vectors)."""
        _, ids = self.bank.search(self.encoder.encode(list(questions)), 1)
        return [int(i) for i in ids[:, 0]]

    def answer(
        self, questions: Sequence[str], *, max_new_tokens: int, system: str | None = None
    ) -> tuple[RecallOutput, list[int]]:
        """Greedy replies with each question's retrieved memory injected; also the memory ids used."""
        ids = self.retrieve(questions)
        prompts = [
            render_chat(
                self.tokenizer,
                xrag_prompt(self.tokenizer, q, self.memory.slots),
                system=system,
                allow=(MEMORY_PAD,),
            )
            for q in questions
        ]
        out = self.generator().generate(prompts, max_new_tokens=max_new_tokens, prompt_memories=ids)
        return out, ids


def train_xrag(
    cfg: XRAGConfig, texts: Sequence[str], rows: Sequence[XRAGRow], encoder: MemoryEncoder | None = None
) -> TrainedXRAG:
    """Write `texts` into a bank with `encoder` (default MiniLM), train the projector on `rows` (whose
    `memory` indexes `texts`) in `cfg.output_dir`, and return what answers with it."""
    require(bool(rows), "rows", "xRAG training needs at least one row")
    encoder = encoder or SentenceEncoder()
    seed_everything(cfg.seed)

    def build(c: XRAGConfig, device: torch.device) -> RecallModel:
        model, tok = load_model(c.model, device=device, seed=c.seed)
        memory = RecallMemory.attach(model, tok, encoder.dim, seed=c.seed, projector_width=c.projector_width)
        model.requires_grad_(False)
        seed_everything(c.seed)  # the LoRA's initial weights
        lm = get_peft_model(model, c.lora.peft_config()) if c.lora.r else model
        # the recall tokens' rows stay as initialised: the one read, the pad's, is replaced by the memory
        rows = NewRowTraining(model, memory.tokens)
        rows.remove()
        return RecallModel(lm, tok, memory, rows, parts=("projector", "lora"))

    job = launch(cfg, cfg.batch_size, build)
    model = job.model
    bank = MemoryBank(encoder.dim)
    write_memories(bank, encoder, list(texts))
    vectors = bank.matrix()[1].to(model.device)
    extra_texts = [f.text for f in auxiliary_facts(cfg.extra_memories, 0, seed=cfg.seed)]
    if extra_texts:  # their vectors follow the bank's, indexed by the extra rows' `memory`
        vectors = torch.cat([vectors, encoder.encode(extra_texts).to(vectors)])
    extra = [XRAGRow(len(texts) + j, t, RESTATE, t) for j, t in enumerate(extra_texts)]
    data = XRAGData(
        model.tokenizer,
        model.memory,
        rows,
        restate_share=cfg.restate_share,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
        extra=extra,
    )
    pad_id = model.tokenizer.pad_token_id

    def micro_step(ctx: StepContext) -> Metrics:
        n_tokens = sum(supervised_tokens(data.sample(ctx.step, i)) for i in ctx.step_indices)
        batch = collate([data.sample(ctx.step, i) for i in ctx.indices], pad_id)
        loss = step2_losses(model.lm, model.memory, batch, vectors).token / n_tokens
        loss.backward()
        return {"loss": loss.item()}

    logs = Trainer(job, n_rows=len(data)).fit(micro_step)
    model.eval()
    if job.dist.is_main:
        model.save_pretrained(job.run.path / "model")
    trainable = model.num_trainable()  # before the merge, which takes the LoRA's own weights away
    merged = model.lm.merge_and_unload() if isinstance(model.lm, PeftModel) else model.lm
    return TrainedXRAG(
        merged.eval(),
        model.tokenizer,
        model.memory,
        bank,
        encoder,
        [m["loss"] for m in logs if "loss" in m],
        job.run.path,
        trainable,
    )
