"""One function that seeds every random number generator a run touches."""

import os
import random

import numpy as np

from latentmem.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and, where present, CUDA) with `seed`."""
    import torch  # here, not at the top: `latentmem --help` imports this module and should not wait for torch

    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
