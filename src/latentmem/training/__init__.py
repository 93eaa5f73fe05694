"""Training recipes for generative latent memory: weaver SFT, weaver GRPO and trigger RL.

    latentmem train sft --config configs/debug/sft.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml -m latentmem.cli train grpo --config ...

Each recipe is `train_<name>(cfg) -> run folder`; `run(config_path, overrides)` is its CLI entry.
"""

from latentmem.training.config import GRPOConfig, SFTConfig, TriggerRLConfig
from latentmem.training.grpo import train_grpo
from latentmem.training.sft import train_sft
from latentmem.training.trigger_rl import train_trigger

__all__ = ["GRPOConfig", "SFTConfig", "TriggerRLConfig", "train_grpo", "train_sft", "train_trigger"]
