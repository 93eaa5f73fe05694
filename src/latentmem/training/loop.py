"""The optimisation loop every recipe shares: data order, gradient accumulation, data parallelism, LR
schedule, autocast, evaluation, metrics, checkpoints and resume. Recipes supply only a micro-step.

Data parallelism. Under `accelerate launch` each process holds the full (small) trainable state. A step's
global batch is cut into `world * grad_accum` equal chunks; chunk `m * world + rank` is micro-step `m` of
process `rank`. Each process accumulates the gradients of its chunks, then the gradients are summed over
processes once per optimiser step (an all-reduce, what DDP does; done by hand because which parameters get
a gradient varies from batch to batch, e.g. `inference_queries` when no row inserts). Micro-steps return
losses already divided by the *global* normaliser, so one process with `grad_accum = k` and k processes
with `grad_accum = 1` compute the same update. Sampling draws from a generator seeded by (seed, step,
chunk), so rollouts too do not depend on how the batch is spread. Launched with an accelerate FSDP
config, the frozen decoder layers are moreover sharded over the processes (`sharding.py`); the trainable
state and its gradient sum stay as described.

Resume. Each step's data comes from a permutation seeded by (seed, epoch), and sampling generators are
seeded per step, so a checkpoint needs only the trainable weights, optimizer, scheduler, RNG states, the
step and the recipe's own state to continue exactly as an uninterrupted run would. It also holds the
resolved config: a resume under a config that differs in more than steps / eval / save settings is refused
(`checkpoint.check_resume_config`) before the run folder is touched.

Safety. The main process locks the run folder for the run's lifetime (`RunDir.lock`), so two runs cannot
share one. A non-finite loss or gradient norm stops the run with a `LatentMemError` before the optimizer
applies it: the last checkpoint stays intact and no diverged model is saved.

What trains. `Trainer` takes any `Trainable`: the `LatentMemoryModel` of the MemGen recipes, the
`lora.LoRAModel` adapter of the LoRA-SFT baseline (so that baseline and weaver share this whole loop and
differ only in the model), or the `recall.memory.RecallModel` of recall training, whose two steps are two
runs of this loop over one model (`recall.train`).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather, reduce
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from latentmem.errors import ConfigError, LatentMemError, ModelLoadError
from latentmem.memgen import LatentMemoryModel
from latentmem.memgen.model import WEIGHTS_FILE
from latentmem.models import load_model
from latentmem.runs import RunDir
from latentmem.seeding import seed_everything
from latentmem.training.checkpoint import (
    check_resume_config,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from latentmem.training.config import RecipeConfig, TrainConfig
from latentmem.training.sharding import (
    fsdp_requested,
    fsdp_settings,
    gathered,
    local_param_bytes,
    shard_frozen,
)

Metrics = dict[str, float]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainable(Protocol):
    """What `Trainer` trains: a torch module with a small trainable part that it hands out, saves and
    restores itself, around a frozen Hugging Face model (`reasoner`) whose decoder layers an FSDP launch
    shards (`sharding.shard_frozen`; `shared` False means a separate `weaver_lm` is sharded too).

    Optionally `param_groups(lr) -> list[dict]`: AdamW parameter groups over `trainable_parameters()`, each
    with its own `lr` (`LatentMemoryModel` trains its queries and projections faster than its LoRA); without
    it every trainable parameter gets `train.lr`."""

    reasoner: PreTrainedModel
    shared: bool

    @property
    def device(self) -> torch.device: ...
    def trainable_parameters(self) -> list[nn.Parameter]: ...
    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
    def save_pretrained(self, directory: str | Path) -> None: ...
    def eval(self) -> Any: ...
    def modules(self) -> Iterator[nn.Module]: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


M = TypeVar("M", bound=Trainable)


class LoopConfig(Protocol):
    """What the loop reads of a recipe's config: the run folder, the seed, the loop settings (`train`) and
    the whole config (`to_dict`, for config.yaml and the resume check). `RecipeConfig` is one; each step of
    recall training is another (`recall.config.RecallStep`)."""

    @property
    def output_dir(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def resumable_fields(self) -> frozenset[str]:
        """The `to_dict` fields a resumed run may change (`checkpoint.RESUMABLE_FIELDS`, by this config's
        names for them)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=LoopConfig)


class Distributed:
    """This process's place in the job (one process when not launched by `accelerate launch`)."""

    def __init__(self) -> None:
        # without CUDA, ask for CPU processes explicitly: then a torchrun-style launch (`accelerate launch
        # --multi_gpu --num_processes N`) joins a gloo process group instead of running N lone processes
        self.state = PartialState(cpu=not torch.cuda.is_available())
        # an accelerate FSDP config shards the frozen reasoner (`sharding.py`); read now, before any model
        # loads, so that unsupported settings fail early
        self.fsdp = fsdp_settings() if fsdp_requested() else None

    def prepare(self, model: Trainable) -> int:
        """Shard `model`'s frozen layers when launched with FSDP (after the recipe chose what trains);
        return the number of sharded weight tensors (0 without FSDP)."""
        return shard_frozen(model, self.world, self.fsdp) if self.fsdp is not None else 0

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return reduce(tensor, reduction="sum") if self.world > 1 else tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a (N, ...) tensor over processes in rank order."""
        return gather(tensor) if self.world > 1 else tensor

    def barrier(self) -> None:
        self.state.wait_for_everyone()


def start_run(cfg: LoopConfig, dist: Distributed) -> RunDir:
    """The run folder `cfg.output_dir`, locked by the main process until `Trainer.fit` ends (one lock per
    run, not per process), with the resolved config, seed, git hash and versions (written once, by the main
    process). A run that will resume is first checked against the config of its checkpoint, by every
    process, so that a refused resume fails on all of them and leaves config.yaml as it was."""
    run = RunDir(Path(cfg.output_dir))
    if dist.is_main:
        run.lock()
    try:
        latest = latest_checkpoint(run.path / "checkpoints") if cfg.train.resume else None
        if latest is not None:
            check_resume_config(
                latest, load_checkpoint(latest).state.get("config"), cfg.to_dict(), cfg.resumable_fields
            )
        if dist.is_main:
            RunDir.create(cfg.output_dir, cfg, cfg.seed)
    except BaseException:
        if dist.is_main:
            run.unlock()
        raise
    dist.barrier()
    return run


def build_model(cfg: RecipeConfig, device: torch.device) -> LatentMemoryModel:
    """The frozen reasoner named by `cfg.model` with a fresh (or `init_from`) weaver and trigger. Seeded,
    so every process builds identical initial weights."""
    reasoner, tokenizer = load_model(cfg.model, device=device, seed=cfg.seed)
    seed_everything(cfg.seed)
    model = LatentMemoryModel(reasoner, tokenizer, cfg.memgen)
    if cfg.init_from:
        init_weights(model, cfg.init_from)
    return model


def init_weights(model: LatentMemoryModel, directory: str | Path) -> None:
    """Load the trainable weights of a `save_pretrained` folder; entries the folder lacks (e.g. a learned
    trigger head when the weaver was trained with trigger `always`) keep their fresh initialisation."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"init_from: {path} does not exist; point it at a saved model folder (run/model)")
    saved = load_file(str(path))
    state = model.trainable_state_dict()
    unknown = sorted(set(saved) - set(state))
    if unknown:
        raise ModelLoadError(f"init_from: {directory} holds weights this model lacks: {unknown[:5]}")
    bad = [k for k in saved if saved[k].shape != state[k].shape]
    if bad:
        raise ModelLoadError(f"init_from: shapes differ for {bad[:5]}; use the memgen settings of that run")
    model.load_trainable_state_dict({**state, **saved})


def check_layout(cfg: LoopConfig, rows_per_step: int, dist: Distributed) -> None:
    """The config fits the process layout: the step's rows split evenly over processes and accumulation
    steps, and FSDP gets the prompt insertion it relies on. `launch` calls this before loading the model
    (the process count is known only at run time)."""
    chunks = dist.world * cfg.train.grad_accum
    if rows_per_step % chunks:
        raise ConfigError(
            f"train.batch_size: {rows_per_step} rows (prompts, for the RL recipes) per step do not split into "
            f"{dist.world} processes x {cfg.train.grad_accum} accumulation steps; make train.batch_size a "
            f"multiple of {chunks} (times G for the RL recipes)"
        )
    if dist.fsdp is not None and isinstance(cfg, RecipeConfig) and cfg.memgen.prompt_latents == 0:
        raise ConfigError(
            "memgen.prompt_latents: FSDP needs every process to run the weaver in every gradient step, which "
            "the prompt insertion guarantees; set prompt_latents > 0, or train with DDP"
        )


@dataclass
class Job(Generic[M]):
    """A started recipe, what `Trainer` takes whole: the config, this process's place in the job, the run
    folder, the model and the rows (prompts, for the RL recipes) of one optimiser step, a number whose fit
    to the process layout `launch` has checked."""

    cfg: LoopConfig
    dist: Distributed
    run: RunDir
    model: M
    rows_per_step: int


def launch(
    cfg: C,
    rows_per_step: int,
    build: Callable[[C, torch.device], M] = build_model,
) -> Job[M]:
    """How every recipe starts: join the process group, check the layout (before any model loads), write
    the run folder, build the model with `build(cfg, device)` (default: a `LatentMemoryModel`)."""
    dist = Distributed()
    check_layout(cfg, rows_per_step, dist)
    run = start_run(cfg, dist)
    return Job(cfg, dist, run, build(cfg, dist.device), rows_per_step)


@dataclass
class StepContext:
    """What a micro-step sees. `indices`: this process's rows of this micro-step; `step_indices`: every row
    of the optimiser step (to compute global normalisers locally); `chunk`: this micro-step's chunk."""

    step: int
    indices: list[int]
    step_indices: list[int]
    chunk: int
    seed: int

    def generator(self, device: torch.device) -> torch.Generator:
        """A sampling generator that depends on (seed, step, chunk), not on the process layout."""
        return torch.Generator(device).manual_seed((self.seed * 1_000_003 + self.step) * 65_537 + self.chunk)


MicroStep = Callable[[StepContext], Metrics]  # runs forward + backward, returns additive metrics
Evaluate = Callable[[list[int]], Metrics]  # this process's eval rows -> additive metrics


# The key under which each process's Ctrl-C request is summed with the step's metrics (and removed again).
_STOP = "_stop_requested"


class _StopRequest:
    """Ctrl-C (SIGINT) while training: the first asks to stop once the current step is done, so that the
    checkpoint then saved holds exactly the steps done (a resume stays bit-identical); a second stops at once,
    unsaved. Outside the main thread, where no handler can be set, Ctrl-C is left as it is."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step (press again to stop now, unsaved)", file=sys.stderr)


class Trainer:
    """Runs `train.steps` optimiser steps of `micro_step` over `n_rows` rows, `job.rows_per_step` rows per
    step, training `job.model`."""

    def __init__(self, job: Job[Any], *, n_rows: int, extra_state: Stateful | None = None) -> None:
        self.cfg, self.model, self.run, self.dist = job.cfg, job.model, job.run, job.dist
        self.n_rows, self.rows_per_step, self.extra_state = n_rows, job.rows_per_step, extra_state
        self.params = self.model.trainable_parameters()
        self.sharded_tensors = self.dist.prepare(self.model)
        self.param_mb = local_param_bytes(self.model) / 2**20  # this process's share of the weights
        t = self.cfg.train
        param_groups = getattr(self.model, "param_groups", None)
        groups = param_groups(t.lr) if param_groups is not None else self.params
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = get_scheduler(
            t.schedule, self.optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.steps
        )
        self.step = 0
        self.ckpt_root = self.run.path / "checkpoints"

    # ---- data order ----------------------------------------------------------------------------
    def step_rows(self, step: int) -> list[int]:
        """The rows of optimiser step `step`: consecutive slices of per-epoch permutations."""
        out: list[int] = []
        pos = step * self.rows_per_step
        while len(out) < self.rows_per_step:
            epoch, offset = divmod(pos, self.n_rows)
            perm = torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
            take = perm[offset : offset + self.rows_per_step - len(out)].tolist()
            out += take
            pos += len(take)
        return out

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self) -> None:
        if self.dist.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "extra": self.extra_state.state_dict() if self.extra_state else None,
                "config": self.cfg.to_dict(),  # what `start_run` compares a resumed run's config with
            }
            save_checkpoint(
                self.ckpt_root,
                self.step,
                self.model.trainable_state_dict(),
                state,
                self.cfg.train.keep_checkpoints,
            )
        self.dist.barrier()

    def resume(self) -> bool:
        """Load `checkpoints/latest` if there is one (and `train.resume`); drop metrics logged after it."""
        path = latest_checkpoint(self.ckpt_root) if self.cfg.train.resume else None
        if path is None:
            if self.dist.is_main:  # a fresh start: metrics of an earlier attempt do not belong to it
                self.run.metrics_path.unlink(missing_ok=True)
            self.dist.barrier()
            return False
        ckpt = load_checkpoint(path)
        self.model.load_trainable_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        set_rng_state(ckpt.state["rng"])
        if self.extra_state is not None:
            self.extra_state.load_state_dict(ckpt.state["extra"])
        self.step = ckpt.step
        if self.dist.is_main:  # the steps after the checkpoint will be logged again
            kept = [m for m in self.run.metrics() if m.get("step", 0) <= self.step]
            self.run.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
            print(f"resumed from step {self.step} ({path})", file=sys.stderr)
        self.dist.barrier()
        return True

    # ---- the loop ------------------------------------------------------------------------------
    def _reduce(self, metrics: Metrics) -> Metrics:
        keys = sorted(metrics)
        if not keys:
            return {}
        total = self.dist.sum(
            torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.dist.device)
        )
        return dict(zip(keys, total.tolist(), strict=True))

    def _sync_gradients(self) -> None:
        """Sum gradients over processes (one flat all-reduce); missing gradients count as zero."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.dist.world > 1:
            flat = self.dist.sum(torch.cat([g.flatten() for g in grads]))
            grads = list(flat.split([g.numel() for g in grads]))
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.view_as(p)

    def _check_finite(self, loss: float, grad_norm: float) -> None:
        """Stop a diverged run before its step is applied: a NaN update would poison every later step and,
        saved, the final model."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            last = latest_checkpoint(self.ckpt_root)
            kept = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was saved yet"
            raise LatentMemError(
                f"step {self.step + 1}: the loss is {loss} and the gradient norm {grad_norm}: training "
                f"diverged. The step was not applied and no final model was saved; {kept}. Lower train.lr, "
                "keep train.max_grad_norm > 0, or check the data"
            )

    def _autocast(self):
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16)

    def evaluate(self, evaluate: Evaluate, n_eval: int) -> Metrics:
        mine = list(range(self.dist.rank, n_eval, self.dist.world))
        # processes may run different numbers of forwards here: sharded layers stay gathered
        with torch.no_grad(), self._autocast(), gathered(self.model):
            return self._reduce(evaluate(mine))

    def fit(
        self,
        micro_step: MicroStep,
        evaluate: Evaluate | None = None,
        n_eval: int = 0,
        postfix: str = "loss",
        derive: Callable[[Metrics], Metrics] | None = None,
    ) -> list[Metrics]:
        """Train to `train.steps` (resuming if possible); log every step to metrics.jsonl; return the logs.
        `derive` adds metrics computed from the summed ones (ratios, which do not add up over processes).
        The run folder's lock is released when training ends, however it ends. Ctrl-C stops after the current
        step, saves a checkpoint and raises `KeyboardInterrupt`; a second Ctrl-C stops at once, unsaved."""
        try:
            with _StopRequest() as stop:
                return self._fit(micro_step, evaluate, n_eval, postfix, derive, stop)
        finally:
            if self.dist.is_main:
                self.run.unlock()

    def _fit(
        self,
        micro_step: MicroStep,
        evaluate: Evaluate | None,
        n_eval: int,
        postfix: str,
        derive: Callable[[Metrics], Metrics] | None,
        stop: _StopRequest,
    ) -> list[Metrics]:
        t = self.cfg.train
        resumed = self.resume()
        finished = self.step >= t.steps
        if finished and self.dist.is_main:
            print(f"run already finished at step {self.step}; nothing to do", file=sys.stderr)
        if evaluate is not None and n_eval and not resumed:  # the baseline every later eval compares to
            baseline = {"step": 0, **self.evaluate(evaluate, n_eval)}
            if self.dist.is_main:
                self.run.log(**baseline)
        # eval mode throughout: dropout in the frozen reasoner would make the learner's log-probs disagree
        # with the rollout's (and LoRA dropout, 0 by default, is off with it)
        self.model.eval()
        logs: list[Metrics] = []
        recipe = type(self.cfg).__name__.removesuffix("Config")  # SFT, GRPO, TriggerRL
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            disable=not self.dist.is_main or finished,
            desc=f"{recipe} {self.cfg.output_dir}",
        )
        chunks = self.dist.world * t.grad_accum
        stopping = saved = False
        while self.step < t.steps and not stopping:
            start = time.perf_counter()
            rows = self.step_rows(self.step)
            size = len(rows) // chunks
            sums: Metrics = {}
            for m in range(t.grad_accum):
                chunk = m * self.dist.world + self.dist.rank
                ctx = StepContext(
                    self.step, rows[chunk * size : (chunk + 1) * size], rows, chunk, self.cfg.seed
                )
                with self._autocast():
                    metrics = micro_step(ctx)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
            self._sync_gradients()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm or float("inf")))
            # summed with the metrics, so that every process stops after the same step, whichever got Ctrl-C
            sums[_STOP] = float(stop.requested)
            reduced = self._reduce(sums)  # the same on every process, so all of them stop together
            stopping = reduced.pop(_STOP) > 0
            self._check_finite(reduced.get("loss", 0.0), grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            log = {"step": self.step, **reduced, "grad_norm": grad_norm}
            # which rows, in which order: two runs (e.g. two arms of `latentmem compare`) saw the same data
            # exactly when their digests agree step by step
            log["rows_digest"] = zlib.crc32(json.dumps(rows).encode())
            if derive is not None:
                log.update(derive(log))
            log["lr"] = self.scheduler.get_last_lr()[0]
            log["step_seconds"] = time.perf_counter() - start
            log["processes"] = self.dist.world
            log["param_mb_per_process"] = self.param_mb
            if self.sharded_tensors:
                log["sharded_tensors"] = self.sharded_tensors
            if (
                evaluate is not None
                and n_eval
                and (self.step == t.steps or (t.eval_every and self.step % t.eval_every == 0))
            ):
                log.update(self.evaluate(evaluate, n_eval))
            logs.append(log)
            if self.dist.is_main:
                self.run.log(**log)
            bar.update(1)
            if postfix in log:
                bar.set_postfix({postfix: f"{log[postfix]:.4f}"})
            saved = bool(self.step == t.steps or (t.save_every and self.step % t.save_every == 0))
            if saved:
                self.save()
        bar.close()
        if stopping and self.step < t.steps:
            if not saved:
                self.save()
            if self.dist.is_main:
                print(
                    f"stopped at step {self.step} of {t.steps}; checkpoint saved. Rerun the same command to "
                    "resume from it.",
                    file=sys.stderr,
                )
            raise KeyboardInterrupt
        if self.dist.is_main:
            self.model.save_pretrained(self.run.path / "model")
        self.dist.barrier()
        return logs
