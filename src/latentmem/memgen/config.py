"""Configuration of a MemGen model: weaver, trigger, insertion points. Defaults are the paper's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentmem.config import Config, require

TriggerPolicy = Literal["always", "never", "every_n", "learned"]
PromptPolicy = Literal["always", "knn"]
LatentNorm = Literal["none", "rms"]
QueryInit = Literal["random", "tokens"]
ProjOut = Literal["dense", "low_rank", "diagonal"]
LatentStart = Literal["weaver", "token"]
PromptLatentsAt = Literal["end", "before_header"]

# LoRA target modules per architecture when the paper's q/v projections go by other names.
DEFAULT_LORA_TARGETS = {"gpt2": ("c_attn",)}


@dataclass
class TriggerConfig(Config):
    """When to weave at a delimiter.

    always: at every delimiter (up to the insertion budget); never: only the prompt latents;
    every_n: at the n-th, 2n-th, ... delimiter; learned: p_j = sigmoid(head(h_j)) on the reasoner's hidden
    state at the delimiter, decided d_j ~ Bernoulli(p_j) when sampling, p_j > threshold when greedy.

    At the prompt (`prompt`): always = the weaver serves every prompt (the paper); knn = only prompts near
    the ones it was trained on, the others answered by the plain reasoner (`memgen.prompt_gate`: a
    k-th-nearest-neighbour test on the reasoner's mean prompt state, fitted at the end of training so that
    a share `prompt_accept` of the training prompts passes; at most `prompt_bank` prompts are kept).
    """

    policy: TriggerPolicy = "always"
    every_n: int = 2
    hidden_size: int = 64  # width of the learned head's hidden layer
    threshold: float = 0.5
    init_bias: float = (
        2.0  # the learned head starts near "always" (sigmoid(2) = 0.88), as trained weavers expect
    )
    prompt: PromptPolicy = "always"
    prompt_k: int = 5
    prompt_accept: float = 0.99
    prompt_bank: int = 4096

    def validate(self) -> None:
        require(self.every_n >= 1, "trigger.every_n", f"must be >= 1, got {self.every_n}")
        require(self.prompt_k >= 1, "trigger.prompt_k", f"must be >= 1, got {self.prompt_k}")
        require(
            0 < self.prompt_accept <= 1,
            "trigger.prompt_accept",
            f"must be in (0, 1], got {self.prompt_accept}",
        )
        require(
            self.prompt_bank > self.prompt_k,
            "trigger.prompt_bank",
            f"must exceed trigger.prompt_k ({self.prompt_k}), got {self.prompt_bank}",
        )
        require(self.hidden_size >= 1, "trigger.hidden_size", f"must be >= 1, got {self.hidden_size}")
        require(0 < self.threshold < 1, "trigger.threshold", f"must be in (0, 1), got {self.threshold}")


@dataclass
class MemGenConfig(Config):
    """A weaver that writes `prompt_latents` latents after the prompt and `inference_latents` latents after
    up to `max_inference_insertions` delimiters of the answer, into a frozen reasoner."""

    prompt_latents: int = 8  # K_p; 0 disables the prompt insertion
    inference_latents: int = 8  # K_i; 0 disables insertions during decoding
    max_inference_insertions: int = 5
    delimiters: tuple[str, ...] = (",", ".", "\n")
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    weaver_model: str | None = (
        None  # a separate weaver LM (joined by projections); None = LoRA on the reasoner
    )
    memory_dim: int | None = None  # dimension of retrieved-memory vectors the weaver may read; None = none
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    # ---- starting harmless (issue 13 §3; the README's "Starting harmless" table measures each) ----
    # rms: latents = RMSNorm(proj_out(h)) * gain, the gain (D_r,) learned and initialised to the per-dimension
    # RMS of the reasoner's token embeddings, so latents start at a token embedding's norm (3.18 against
    # 3.20 on SmolLM2, instead of ~32 with a bare dense proj_out; with proj_out diagonal the weaver states'
    # outlier dimensions survive the norm: 7.75). Measured: prompt-latent harm +53% -> +32%, both unchanged
    latent_norm: LatentNorm = "none"
    # token (needs latent_norm rms): latents = e(latent_start_token) + gain * RMSNorm(proj_out(h)), the gain
    # starting at 0 and the offset at the token's embedding, so a fresh weaver writes K copies of that token
    # (the weaver's share grows from zero, as a LoRA's B = 0 does). Measured on SmolLM2 (8 latents each
    # kind): prompt-latent NLL rise +8% with "\n" (+31% " ", +16% "."), against +85% for a fresh rms weaver
    # where the K_p prompt latents go: end = after the whole prompt, the assistant header included (the
    # paper); before_header = before the chat template's assistant header (ChatML `<|im_start|>assistant\n`),
    # which the reasoner then reads after them. Measured on SmolLM2 (8 latents, 28 held-out answers): the
    # answer NLL rises +62% (random latents of the embeddings' RMS), +31% (8 spaces) after the header, and
    # +0.6% / +0.1% before it
    prompt_latents_at: PromptLatentsAt = "end"
    latent_start: LatentStart = "weaver"
    latent_start_token: str = "\n"
    # tokens: query vectors start as the input embeddings of random ordinary vocabulary tokens (the weaver
    # reads them like text); random: Gaussian with the embeddings' std
    query_init: QueryInit = "random"
    # dense: a D_w x D_r linear map; low_rank: D_w -> proj_out_rank -> D_r; diagonal: an elementwise gain and
    # bias starting at the identity (needs D_w == D_r, i.e. the shared weaver)
    proj_out: ProjOut = "dense"
    proj_out_rank: int = 16
    # learning rate of the query vectors and projections (and the latent gain) relative to train.lr; the
    # LoRA and the trigger head train at train.lr itself (read by `LatentMemoryModel.param_groups`)
    head_lr_scale: float = 1.0

    def validate(self) -> None:
        require(self.prompt_latents >= 0, "prompt_latents", f"must be >= 0, got {self.prompt_latents}")
        require(
            self.inference_latents >= 0, "inference_latents", f"must be >= 0, got {self.inference_latents}"
        )
        require(
            self.max_inference_insertions >= 0,
            "max_inference_insertions",
            f"must be >= 0, got {self.max_inference_insertions}",
        )
        require(
            len(self.delimiters) > 0 and all(self.delimiters),
            "delimiters",
            "give at least one non-empty string",
        )
        require(self.lora_r >= 1, "lora_r", f"must be >= 1, got {self.lora_r}")
        require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        require(
            self.memory_dim is None or self.memory_dim >= 1,
            "memory_dim",
            f"must be >= 1 or null, got {self.memory_dim}",
        )
        require(len(self.lora_targets) > 0, "lora_targets", "name at least one module, e.g. [q_proj, v_proj]")
        require(self.proj_out_rank >= 1, "proj_out_rank", f"must be >= 1, got {self.proj_out_rank}")
        require(self.head_lr_scale > 0, "head_lr_scale", f"must be > 0, got {self.head_lr_scale}")
        require(
            self.latent_start == "weaver" or self.latent_norm == "rms",
            "latent_start",
            "token adds the weaver's RMS-normed output through a zero-initialised gain; set latent_norm: rms",
        )
        require(bool(self.latent_start_token), "latent_start_token", "must be a non-empty string, e.g. '\\n'")
        require(
            self.proj_out != "diagonal" or self.weaver_model is None,
            "proj_out",
            "diagonal maps the weaver's states elementwise, so it needs the shared weaver (weaver_model: "
            "null); use dense or low_rank with a separate weaver model",
        )

    @property
    def inserts_during_decoding(self) -> bool:
        return (
            self.inference_latents > 0
            and self.max_inference_insertions > 0
            and self.trigger.policy != "never"
        )
