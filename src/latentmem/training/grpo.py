"""Weaver GRPO: G completions per prompt from our generation, group-relative advantages, a clipped
objective over completion tokens, optional KL to the frozen base. `latentmem train grpo --config FILE`.

Per micro-step: sample rollouts (weaver and trigger active), score them, recompute the completion tokens'
log-probs with a training forward that replays the rollout's insertion plan (same latents at the same
places; before the first update the ratio to the rollout's log-probs is 1), and minimise

    L = 1/N_global * sum_i 1/|o_i| * sum_t [ -min(r_it A_i, clip(r_it, 1-eps, 1+eps) A_i) + beta KL_it ]

over completion tokens up to and including EOS (never after), with r_it = exp(logp - logp_rollout) and
KL_it = exp(ref - logp) - (ref - logp) - 1 (the k3 estimator), ref = the base reasoner's log-prob of the
same tokens *without any latents* (`reasoner_mode` on the plain token sequence). One update per rollout
batch, as TRL's default (`num_iterations=1`): the clip then guards against numerical drift between
rollout and learner (e.g. under bf16), and the objective stays the paper's.

Every log-prob is of the distribution the rollout drew from, softmax(z / T) at `grpo.temperature` T:
the rollout records it (`GenerationResult.logprobs`) and the learner and the reference divide their logits
by T, as TRL does. Top-k / top-p truncation is refused (`GRPOSettings`): replaying it in the learner would
give a token that drift pushes just outside the kept set log-prob -inf (ratio 0, KL inf), and scoring
without it, as TRL does, would make the ratio not 1 where the rollout truncated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentmem.decoding import positions_from_valid
from latentmem.memgen import LatentMemoryModel
from latentmem.training.config import GRPOConfig, GRPOSettings
from latentmem.training.data import encode_rows, load_rows
from latentmem.training.loop import Metrics, StepContext, Trainer, launch
from latentmem.training.prompt_gate import fit_prompt_gate
from latentmem.training.rewards import resolve_reward
from latentmem.training.rollout import Rollouts, Sampler, group_advantages


@torch.no_grad()
def base_logprobs(
    model: LatentMemoryModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, T) log p_base(input_ids[:, t] | input_ids[:, :t]) under the frozen reasoner with no latents and
    the weaver's LoRA off, of softmax(logits / temperature); column 0 is 0."""
    positions = positions_from_valid(attention_mask.bool())
    with model.reasoner_mode() as reasoner:
        logits = reasoner(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logits = logits[:, :-1].float() / temperature
    logp = logits.log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return torch.cat([torch.zeros_like(logp[:, :1]), logp], 1)


def learner_logprobs(
    model: LatentMemoryModel, ro: Rollouts, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward's log-probs (B, N) of the completion tokens of `ro`, replaying its insertion
    plan, under softmax(logits / temperature) (the rollout's sampling distribution at that temperature);
    and the (B, N) bool mask of the tokens that count (up to and including EOS)."""
    T = ro.prompt_len
    out = model(
        ro.input_ids,
        ro.attention_mask,
        ro.labels,
        plan=ro.result.plan,
        memory=ro.memory,
        temperature=temperature,
    )
    return out.token_logprobs[:, T:], ro.result.completion_mask() & out.target_mask[:, T:]


def grpo_loss(
    model: LatentMemoryModel, ro: Rollouts, s: GRPOSettings, n_global: int
) -> tuple[torch.Tensor, Metrics]:
    """The GRPO loss of rollouts `ro` divided by `n_global` (completions in the whole step), and additive
    metrics. Gradients flow into the weaver only (the reasoner is frozen)."""
    T = ro.prompt_len
    logp, mask = learner_logprobs(model, ro, s.temperature)  # (B, N) each
    ratio = torch.exp(logp - ro.result.logprobs)
    adv = group_advantages(ro.rewards, s.num_generations)[:, None]  # (B, 1)
    clipped = ratio.clamp(1 - s.epsilon, 1 + s.epsilon)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    metrics: Metrics = {}
    if s.beta > 0:
        delta = base_logprobs(model, ro.input_ids, ro.attention_mask, s.temperature)[:, T:] - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + s.beta * kl
        metrics["kl"] = float(((kl.detach() * mask).sum(1) / mask.sum(1)).sum()) / n_global
    per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    loss = per_seq.sum() / n_global
    metrics.update(
        loss=loss.item(),
        reward=float(ro.rewards.sum()) / n_global,
        completion_tokens=float(mask.sum()) / n_global,
        insertions=float(ro.insertions().sum()) / n_global,
    )
    return loss, metrics


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run weaver GRPO per `cfg`; return the run folder. Evaluation: mean greedy reward on the eval rows."""
    s = cfg.grpo
    reward_fn = resolve_reward(s.reward, s.reward_args)
    train_rows, eval_rows = load_rows(cfg.data, cfg.seed)
    G = s.num_generations
    job = launch(cfg, cfg.train.batch_size // G)
    dist, run, model = job.dist, job.run, job.model
    train_rows, train_items = encode_rows(train_rows, model, cfg, "train")
    eval_rows, eval_items = encode_rows(eval_rows, model, cfg, "eval")
    train = Sampler(model, train_items, train_rows, s, reward_fn, cfg.data)
    evals = Sampler(model, eval_items, eval_rows, s, reward_fn, cfg.data)
    trainer = Trainer(job, n_rows=len(train_rows))

    def micro_step(ctx: StepContext) -> Metrics:
        ro = train(ctx.indices, ctx.generator(dist.device))
        loss, metrics = grpo_loss(model, ro, s, len(ctx.step_indices) * G)
        loss.backward()
        return metrics

    def evaluate(indices: list[int]) -> Metrics:
        if not indices:
            return {"eval_reward": 0.0}
        ro = evals(indices, torch.Generator(dist.device).manual_seed(cfg.seed), sample=False, groups=1)
        return {"eval_reward": float(ro.rewards.sum()) / len(eval_rows)}

    trainer.fit(micro_step, evaluate if eval_rows else None, len(eval_rows), postfix="reward")
    fit_prompt_gate(job, train_items)
    return run.path


def run(config_path: str, overrides: list[str]) -> Path:
    """CLI entry: `latentmem train grpo --config FILE [key.sub=value ...]`."""
    return train_grpo(GRPOConfig.from_yaml(config_path, overrides))
