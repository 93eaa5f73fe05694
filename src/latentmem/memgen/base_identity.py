"""Which base model a saved MemGen checkpoint belongs to: its shapes (`base_identity`) and a fixed sample of
its weights (`fingerprint`), saved beside the trained state and checked on load (`check_base`), so that a
weaver is never loaded onto a model of the same architecture with other weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from latentmem.errors import ModelLoadError


def base_identity(model: PreTrainedModel) -> dict:
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.get_text_config().hidden_size,
        "num_hidden_layers": cfg.get_text_config().num_hidden_layers,
        "vocab_rows": model.get_input_embeddings().num_embeddings,
    }


# Weights sampled per tensor by `fingerprint`, and the tolerance (a share of the largest sampled magnitude)
# within which two samples count as the same weights: loose enough for a base loaded in bfloat16 or float16
# (relative rounding <= 2^-8), tight enough for a differently initialised or fine-tuned model.
FINGERPRINT_VALUES = 16
FINGERPRINT_TOLERANCE = 1e-2


def fingerprint(model: PreTrainedModel) -> dict[str, Any]:
    """Fixed samples of `model`'s token embeddings and of its first other matrix (by name): with the shapes
    of `base_identity`, they tell apart two models of one architecture, a weaver trained on one being wrong on
    the other. Values rather than a hash, so that a base loaded in another dtype still matches."""
    emb = model.get_input_embeddings().weight
    matrices = {  # LoRA's own weights excluded and its wrapping undone: the same names with or without it
        name.removeprefix("base_model.model.").replace(".base_layer", ""): p
        for name, p in model.named_parameters()
        if "lora_" not in name and p.dim() == 2 and p is not emb
    }
    layer = min(matrices)

    def sample(w: torch.Tensor) -> list[float]:
        flat = w.detach().reshape(-1)
        # integer spacing: a float linspace rounds past the last index of a large matrix (float32 has 24 bits)
        at = torch.arange(FINGERPRINT_VALUES) * (flat.numel() - 1) // (FINGERPRINT_VALUES - 1)
        return [round(v, 6) for v in flat[at.to(flat.device)].float().tolist()]

    return {"embeddings": sample(emb), "layer": layer, "layer_values": sample(matrices[layer])}


def same_weights(saved: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether two `fingerprint`s are of the same weights (up to dtype rounding)."""
    if saved["layer"] != found["layer"]:
        return False
    for key in ("embeddings", "layer_values"):
        a, b = torch.tensor(saved[key]), torch.tensor(found[key])
        if a.shape != b.shape or (a - b).abs().max() > FINGERPRINT_TOLERANCE * a.abs().max().clamp_min(1e-6):
            return False
    return True


def check_base(
    model: PreTrainedModel,
    identity: dict[str, Any],
    weights: dict[str, Any] | None,
    what: str,
    config_file: Path,
) -> None:
    """ModelLoadError unless `model` has the saved shapes `identity` and weight fingerprint `weights` (a
    warning when the checkpoint predates fingerprints): `what` ("base model", "weaver model") is the model a
    checkpoint's trained state belongs to; `config_file`, the checkpoint's config, is named in the warning."""
    found = base_identity(model)
    if found != identity:
        diffs = {k: (identity[k], found.get(k)) for k in identity if identity[k] != found.get(k)}
        raise ModelLoadError(
            f"this MemGen checkpoint was trained on a different {what}: (saved, given) = {diffs}. "
            f"Load it onto the {what} it was trained with."
        )
    if weights is None:  # saved before fingerprints: only the shapes could be checked
        warnings.warn(
            f"{config_file} has no {what} weight fingerprint (saved by an older latentmem): "
            f"only the {what}'s shapes were checked, not that it is the model it was trained on. "
            "Save it again to add one.",
            stacklevel=3,
        )
    elif not same_weights(weights, fingerprint(model)):
        raise ModelLoadError(
            f"this MemGen checkpoint was trained on a {what} of the same architecture and shapes but "
            f"different weights ({identity['model_type']}: its embeddings or {weights['layer']} differ). "
            f"Load it onto the {what} it was trained with."
        )
