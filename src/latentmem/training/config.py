"""Typed configs of the training recipes: `SFTConfig`, `GRPOConfig`, `TriggerRLConfig`.

Every recipe config shares `model`, `seed`, `output_dir` (the run folder), `init_from`, a `memgen` section
(the `MemGenConfig`), a `data` section and a `train` section (optimiser, schedule, batches, checkpoints).
The RL recipes add a `grpo` or `rl` section. Everything is validated at construction, before a model is
loaded; errors name the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from latentmem.config import Config, require
from latentmem.memgen.config import MemGenConfig
from latentmem.training.checkpoint import RESUMABLE_FIELDS


@dataclass
class DataConfig(Config):
    """Prompt/answer rows: a JSONL file (`path`) or a built-in synthetic task (`task`, when `path` is null).

    Built-in tasks (see `latentmem.training.data.synthetic_rows`): `arithmetic` ("What is 3 + 4?" -> "7"),
    `echo` ("Repeat: red blue" -> "red blue"), `generic` (everyday instructions with empty answers, the
    warm-up's prompts). Rows keep every column; reward functions receive them.

    Two answer columns, for two uses: `answer_column` holds the gold answer that reward functions receive
    (also as `answer`), `target_column` the text SFT trains on. They differ when the target is a worked
    solution ("47 + 38 = 85.\n#### 85") and the gold answer what a completion is scored against ("85"); a
    JSONL with only an answer column leaves `target_column` null, and SFT trains on the answer.
    """

    path: str | None = None
    eval_path: str | None = None
    task: Literal["arithmetic", "echo", "generic"] = "arithmetic"
    train_size: int = 512  # synthetic tasks only
    eval_size: int = 64  # synthetic tasks only; a JSONL without eval_path uses none
    prompt_column: str = "prompt"
    answer_column: str = "answer"  # the gold answer, for rewards
    target_column: str | None = None  # the SFT target; null = answer_column
    system: str | None = None  # optional system turn of the chat template
    # a column of retrieved-memory vectors per row (a list of equal-length lists), read by a weaver built
    # with memgen.memory_dim (M = W([H; E])); null = no retrieved memories
    memory_column: str | None = None
    # the most tokens one row may have, prompt (chat-templated) + SFT target + EOS; longer rows are skipped
    # with a warning (never truncated: a cut answer would teach a wrong target). null = the model's
    # positions less the latent slots MemGen adds, read when the model loads
    max_length: int | None = None

    @property
    def sft_column(self) -> str:
        """The column SFT trains on: `target_column`, else `answer_column`."""
        return self.target_column or self.answer_column

    def validate(self) -> None:
        require(self.train_size >= 1, "data.train_size", f"must be >= 1, got {self.train_size}")
        require(self.eval_size >= 0, "data.eval_size", f"must be >= 0, got {self.eval_size}")
        require(
            self.max_length is None or self.max_length >= 2,
            "data.max_length",
            f"must be >= 2 (a prompt token and EOS) or null for the model's positions, got {self.max_length}",
        )
        require(bool(self.prompt_column), "data.prompt_column", "name the column that holds the prompt")
        require(bool(self.answer_column), "data.answer_column", "name the column that holds the gold answer")
        require(
            self.target_column is None or bool(self.target_column),
            "data.target_column",
            "name the column that holds the SFT target, or leave it null to train on data.answer_column",
        )


@dataclass
class TrainConfig(Config):
    """The optimisation loop. `batch_size` is the global batch of one optimiser step, over all processes and
    gradient-accumulation micro-steps (completions, for the RL recipes)."""

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant_with_warmup", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping
    bf16: bool = False  # torch.autocast to bfloat16 (CPU or CUDA) in the forward passes
    eval_every: int = 0  # 0 = evaluate only at the end
    save_every: int = 0  # 0 = checkpoint only at the end
    keep_checkpoints: int = 2
    resume: bool = True  # continue from output_dir/checkpoints/latest when it exists

    def validate(self) -> None:
        require(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(
            self.batch_size % self.grad_accum == 0,
            "train.grad_accum",
            f"must divide train.batch_size ({self.batch_size}); got {self.grad_accum}",
        )
        require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        require(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.save_every >= 0, "train.save_every", f"must be >= 0, got {self.save_every}")
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")


@dataclass
class RecipeConfig(Config):
    """What every recipe shares. `init_from`: a `save_pretrained` folder (e.g. a finished SFT run's
    `model/`) whose trainable weights initialise this run; entries this model lacks are an error."""

    model: str = "tiny-qwen2"
    output_dir: str = "runs/train"
    seed: int = 0
    init_from: str | None = None
    memgen: MemGenConfig = field(default_factory=MemGenConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def resumable_fields(self) -> frozenset[str]:
        return RESUMABLE_FIELDS

    def validate(self) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(bool(self.output_dir), "output_dir", "give a run folder, e.g. runs/sft")
        require(
            (self.data.memory_column is None) == (self.memgen.memory_dim is None),
            "memgen.memory_dim",
            "set data.memory_column and memgen.memory_dim together (the weaver reads that column's vectors)",
        )
        require(
            self.memgen.lora_dropout == 0,
            "memgen.lora_dropout",
            "must be 0 for training: the model trains in eval mode, so that the frozen reasoner's dropout "
            "cannot make the learner disagree with the rollouts",
        )


@dataclass
class SFTConfig(RecipeConfig):
    """Weaver SFT: next-token loss on the answer tokens, the reasoner frozen."""


@dataclass
class RolloutConfig(Config):
    """How the RL recipes sample: G completions per prompt with our generation, scored by a reward function.

    `reward`: a name from `latentmem.training.rewards.REWARDS` or "module:function" with TRL's signature
    `(prompts, completions, **columns) -> list[float]`; `reward_args` are passed to it as keywords.
    """

    num_generations: int = 4  # G
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    reward: str = "exact_match"
    reward_args: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages compare a group)")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


@dataclass
class GRPOSettings(RolloutConfig):
    epsilon: float = 0.2  # PPO clip range of the ratio
    beta: float = 0.0  # KL to the frozen base reasoner (no latents); 0 as in the paper

    def validate(self) -> None:
        super().validate()
        require(0 < self.epsilon < 1, "grpo.epsilon", f"must be in (0, 1), got {self.epsilon}")
        require(self.beta >= 0, "grpo.beta", f"must be >= 0, got {self.beta}")
        # the learner scores softmax(z / temperature) exactly; truncation it cannot replay safely
        # (`latentmem.training.grpo` says why), so it is refused rather than silently mis-scored
        for name, off in (("top_k", 0), ("top_p", 1.0)):
            require(
                getattr(self, name) == off,
                f"grpo.{name}",
                f"must be {off} (off) for GRPO, got {getattr(self, name)}: the importance ratio scores "
                "softmax(logits / temperature), so rollouts must be drawn from exactly that",
            )


@dataclass
class TriggerRLSettings(RolloutConfig):
    """Reward-adaptive penalty of the paper, per rollout: `penalty` * max(0, n_ins - p_bar * n_cand), i.e.
    lambda per insertion beyond the rate p_bar times the rollout's candidate delimiters (the paper's
    lambda * sum_j max(0, d_j - p_bar) with the hinge on the rollout's rate; `training.trigger_rl` says why).
    It is subtracted from the group-normalised task reward in its own units: lambda is the price of one
    excess insertion in task-reward group stds.

    p_bar is an exponential moving average (`p_bar_momentum`) of the mean invocation rate (insertions /
    candidates) of the high-reward rollouts of each batch: those whose reward is >= the
    `high_reward_quantile` quantile of all the batch's rewards AND strictly above the batch minimum, among
    them those with a candidate (a batch of equal rewards, or whose high-reward rollouts have no candidate,
    keeps the previous p_bar). `p_bar_init` is its value before any evidence (0 = every insertion is
    penalised until high-reward rollouts show otherwise; 1 = none is).
    """

    penalty: float = 0.1  # lambda
    high_reward_quantile: float = 0.75
    p_bar_momentum: float = 0.9
    p_bar_init: float = 0.0

    def validate(self) -> None:
        super().validate()
        require(self.penalty >= 0, "rl.penalty", f"must be >= 0, got {self.penalty}")
        require(0 <= self.high_reward_quantile <= 1, "rl.high_reward_quantile", "must be in [0, 1]")
        require(0 <= self.p_bar_momentum < 1, "rl.p_bar_momentum", "must be in [0, 1)")
        require(0 <= self.p_bar_init <= 1, "rl.p_bar_init", "must be in [0, 1]")


def _require_groups(cfg: RecipeConfig, g: int, section: str) -> None:
    require(
        cfg.train.batch_size % (g * cfg.train.grad_accum) == 0,
        f"{section}.num_generations",
        f"G={g} times train.grad_accum={cfg.train.grad_accum} must divide train.batch_size="
        f"{cfg.train.batch_size} (the batch counts completions, G per prompt); change one of them",
    )


@dataclass
class GRPOConfig(RecipeConfig):
    """Weaver GRPO. `train.batch_size` counts completions: batch_size / G prompts per step."""

    grpo: GRPOSettings = field(default_factory=GRPOSettings)

    def validate(self) -> None:
        super().validate()
        _require_groups(self, self.grpo.num_generations, "grpo")


@dataclass
class TriggerRLConfig(RecipeConfig):
    """Trigger RL: Bernoulli insert/skip decisions of the learned trigger, trained on task reward. Only the
    trigger head learns; the weaver stays as `init_from` left it (the paper trains the two separately)."""

    rl: TriggerRLSettings = field(default_factory=TriggerRLSettings)

    def validate(self) -> None:
        super().validate()
        _require_groups(self, self.rl.num_generations, "rl")
        require(
            self.memgen.trigger.policy == "learned",
            "memgen.trigger.policy",
            f"trigger RL trains the learned trigger; set it to learned (got {self.memgen.trigger.policy!r})",
        )
        require(
            self.memgen.inserts_during_decoding,
            "memgen.inference_latents",
            "trigger RL needs insertions during decoding: inference_latents and max_inference_insertions > 0",
        )
