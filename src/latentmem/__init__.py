"""latentmem: memory for language models and agents.

Generative latent memory (MemGen), autoregressive recall memory, retrieval and conversation memory,
with training, evaluation and serving, on any Hugging Face causal LM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentmem._lazy import lazy_package

# The public names, imported on first use (`latentmem._lazy`): `import latentmem` and `latentmem --help`
# then need no torch.
if TYPE_CHECKING:
    from latentmem.config import Config
    from latentmem.errors import ConfigError, LatentMemError, ModelLoadError
    from latentmem.models import available_models, load_model
    from latentmem.runs import RunDir
    from latentmem.seeding import seed_everything

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "LatentMemError",
    "ModelLoadError",
    "RunDir",
    "available_models",
    "load_model",
    "seed_everything",
]

lazy_package(__name__)
