"""The small trained modules around the weaver (DESIGN.md §1): the latents' RMS norm to the embeddings'
scale, the output projections from weaver states to reasoner embeddings, and the query vectors' start."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentmem.errors import LatentMemError
from latentmem.memgen.config import MemGenConfig


class EmbeddingRMSNorm(nn.Module):
    """Latents on the scale of token embeddings: x / rms(x) * gain, with the gain (D_r,) initialised to the
    per-dimension RMS of `embeddings` (V, D_r), so a latent's norm starts at the embeddings' RMS norm.

    Why: a dense random `proj_out` writes latents of norm ~34 into SmolLM2, whose token embeddings have
    norm ~3, and the answer NLL nearly triples at initialisation (issue 13: 0.73 -> 2.02).

    With `start_token` (config `latent_start: token`) the gain starts at zero and a learned offset at that
    token's embedding: x / rms(x) * gain + offset, so a fresh weaver writes copies of one real token (which
    the reasoner reads as text, a newline harming least of those measured) and its own contribution grows
    from zero as a LoRA's does from B = 0; the gain's gradient is non-zero from the first step."""

    def __init__(self, embeddings: torch.Tensor, eps: float = 1e-6, start_token: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        emb = embeddings.detach().float()
        rms = emb.pow(2).mean(0).sqrt()
        self.gain = nn.Parameter(rms if start_token is None else torch.zeros_like(rms))
        self.offset = None if start_token is None else nn.Parameter(emb[start_token].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D_r) -> (..., D_r)."""
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.gain
        return out if self.offset is None else out + self.offset


class DiagonalProjection(nn.Module):
    """y = x * weight + bias, elementwise on (..., D); starts as the identity, so the latents start as the
    weaver's own last-layer states (which, for a model with tied embeddings, point at likely next tokens)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


def start_token(tokenizer: PreTrainedTokenizerBase, cfg: MemGenConfig) -> int | None:
    """The id of `cfg.latent_start_token` when latents start as that token (`latent_start: token`)."""
    if cfg.latent_start != "token":
        return None
    ids = tokenizer.encode(cfg.latent_start_token, add_special_tokens=False)
    if len(ids) != 1:
        raise LatentMemError(
            f"latent_start_token: {cfg.latent_start_token!r} is {len(ids)} tokens for this tokenizer; "
            "choose a string that is one token (e.g. '\\n')"
        )
    return ids[0]


def output_projection(cfg: MemGenConfig, d_w: int, d_r: int) -> nn.Module:
    """The map from weaver states (D_w) to reasoner embeddings (D_r) that `cfg.proj_out` names."""
    if cfg.proj_out == "low_rank":
        return nn.Sequential(nn.Linear(d_w, cfg.proj_out_rank, bias=False), nn.Linear(cfg.proj_out_rank, d_r))
    if cfg.proj_out == "diagonal":
        if d_w != d_r:
            raise LatentMemError(
                f"proj_out: diagonal needs the weaver's width ({d_w}) to equal the reasoner's ({d_r}); "
                "use dense or low_rank"
            )
        return DiagonalProjection(d_r)
    return nn.Linear(d_w, d_r)


def initial_queries(
    k: int, weaver: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: MemGenConfig
) -> torch.Tensor:
    """(k, D_w) starting query vectors (float32), drawn from torch's global RNG (seed it for reproducible
    weights). `cfg.query_init` tokens: the weaver's input embeddings of k random ordinary (non-special)
    vocabulary tokens; random: Gaussian with the embeddings' std."""
    table = weaver.get_input_embeddings().weight.detach().float()
    if cfg.query_init == "tokens":
        special = set(tokenizer.all_special_ids)
        ordinary = torch.tensor([i for i in range(min(len(tokenizer), table.shape[0])) if i not in special])
        return table[ordinary[torch.randint(len(ordinary), (k,))]].cpu().clone()
    return torch.randn(k, table.shape[1]) * float(table.std())
