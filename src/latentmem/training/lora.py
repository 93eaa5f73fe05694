"""LoRA SFT of the reasoner itself: the baseline the weaver is compared with, trained by the same
`loop.Trainer` (data order, optimiser, schedule, clipping, checkpoints, resume, metrics) and with the same
loss normalisation as weaver SFT (`training.sft`), so that the two arms differ only in what trains.

`LoRAModel` adapts a PEFT LoRA model to `loop.Trainable`. Its training forward passes position ids
counted over the valid (non-padding) tokens: the batches are left-padded, and a model with absolute
position embeddings (GPT-2) would otherwise see every padded row shifted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.decoding import IGNORE, positions_from_valid
from latentmem.errors import ConfigError, ModelLoadError
from latentmem.models import load_model
from latentmem.seeding import seed_everything
from latentmem.training.config import RecipeConfig, SFTConfig
from latentmem.training.data import Encoded, collate, load_rows
from latentmem.training.loop import launch
from latentmem.training.sft import fit_sft


class LoRAModel(nn.Module):
    """A frozen Hugging Face causal LM with a trainable PEFT LoRA adapter, as a `loop.Trainable`."""

    shared = True  # one frozen model: FSDP shards only `reasoner`

    def __init__(self, peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.peft, self.tokenizer = peft_model, tokenizer

    @classmethod
    def build(cls, cfg: RecipeConfig, device: torch.device, lora: LoraConfig) -> LoRAModel:
        """`cfg.model` with a fresh adapter `lora` (B = 0: it starts as the base model), or, with
        `cfg.init_from`, the adapter saved there (continual learning), which must have `lora`'s rank and
        target modules. Seeded, so every process builds identical initial weights."""
        model, tokenizer = load_model(cfg.model, device=device, seed=cfg.seed)
        seed_everything(cfg.seed)
        if not cfg.init_from:
            return cls(get_peft_model(model, lora), tokenizer)
        if not (Path(cfg.init_from) / "adapter_config.json").is_file():
            raise ConfigError(f"init_from: {cfg.init_from} holds no PEFT adapter (adapter_config.json)")
        saved = LoraConfig.from_pretrained(cfg.init_from)
        if saved.r != lora.r or set(saved.target_modules) != set(lora.target_modules):
            raise ConfigError(
                f"init_from: the adapter in {cfg.init_from} has rank {saved.r} on "
                f"{sorted(saved.target_modules)}, this run's LoRA rank {lora.r} on "
                f"{sorted(lora.target_modules)}; use the memgen settings of that run"
            )
        return cls(PeftModel.from_pretrained(model, cfg.init_from, is_trainable=True), tokenizer)

    @property
    def reasoner(self) -> PreTrainedModel:
        """The base model, with the adapter's layers inside it."""
        return self.peft.get_base_model()

    @property
    def device(self) -> torch.device:
        return self.peft.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.peft.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.peft.named_parameters() if p.requires_grad}
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ModelLoadError(
                f"LoRA state does not fit this adapter: missing {missing[:5]}, extra {extra[:5]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])

    def save_pretrained(self, directory: str | Path) -> None:
        """PEFT's adapter folder (`PeftModel.from_pretrained(base, directory)` loads it back)."""
        self.peft.save_pretrained(str(directory))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits of a left-padded batch, positions counted over its valid tokens."""
        positions = positions_from_valid(attention_mask.bool())
        return self.peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


def summed_nll(model: LoRAModel, items: Sequence[Encoded], pad_id: int, device: torch.device) -> torch.Tensor:
    """() the summed NLL of the answer tokens of `items` (the same quantity as `sft.summed_nll`)."""
    ids, mask, labels = (t.to(device) for t in collate(items, pad_id))
    logits = model(ids, mask)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


def train_lora_sft(cfg: SFTConfig, lora: LoraConfig) -> tuple[Path, LoRAModel]:
    """LoRA SFT of `cfg.model` per `cfg` (its `memgen` section unused); return the run folder
    (metrics.jsonl, checkpoints/, model/ = the adapter) and the trained model."""
    train_rows, eval_rows = load_rows(cfg.data, cfg.seed)  # column errors before the model loads
    job = launch(cfg, cfg.train.batch_size, functools.partial(LoRAModel.build, lora=lora))
    fit_sft(job, train_rows, eval_rows, summed_nll)  # the weaver's loop, with the LoRA model's NLL
    return job.run.path, job.model
