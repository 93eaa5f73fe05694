"""latentmem: memory for language models and agents.

Generative latent memory (MemGen), autoregressive recall memory, retrieval and conversation memory,
with training, evaluation and serving, on any Hugging Face causal LM.
"""

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
