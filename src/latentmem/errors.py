"""Exceptions raised by latentmem. Every message names the problem and, where there is one, the fix."""


class LatentMemError(Exception):
    """Base class of every error latentmem raises on purpose."""


class ConfigError(LatentMemError, ValueError):
    """A configuration value is missing, unknown or out of range. The message names the field."""


class ModelLoadError(LatentMemError):
    """A model or tokenizer could not be loaded, or the two do not belong together."""
