"""What a latent is near in the reasoner's own vocabulary.

Two readings per latent: the nearest input embeddings by cosine (what token the latent most resembles as
an input), and a logit-lens reading, the reasoner's output head applied to the latent (what the head would
predict from it). Latents are inputs, not last-layer states, so the lens applies no final norm; it is a
direction reading, and says nothing about what the reasoner's layers make of the latent in context.
Norms are reported beside the token embeddings' norms: a latent far outside their range is read by the
reasoner unlike any token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentmem.memgen import LatentMemoryModel

CHUNK = 1024  # latents per similarity matmul: (CHUNK, V) floats stay small even for a 150k vocabulary


@dataclass
class LatentReading:
    """One latent's neighbours: (token text, cosine) and (token text, head probability), best first."""

    nearest: list[tuple[str, float]]
    lens: list[tuple[str, float]]
    norm: float

    def as_dict(self) -> dict:
        return {
            "nearest": [[t, round(s, 4)] for t, s in self.nearest],
            "lens": [[t, round(p, 4)] for t, p in self.lens],
            "norm": round(self.norm, 4),
        }


def embedding_norms(model: LatentMemoryModel) -> torch.Tensor:
    """(V,) L2 norms of the reasoner's input embeddings of real tokens (rows past the tokenizer's
    vocabulary are padding and left out)."""
    weight = model.reasoner.get_input_embeddings().weight
    return weight[: len(model.tokenizer)].detach().float().norm(dim=-1).cpu()


@torch.no_grad()
def read_latents(model: LatentMemoryModel, latents: torch.Tensor, top_k: int = 5) -> list[LatentReading]:
    """Readings of latents (N, D) (float, any device): top-`top_k` tokens by cosine to the input
    embeddings and by the output head's softmax."""
    tok = model.tokenizer
    vocab = len(tok)
    emb = model.reasoner.get_input_embeddings().weight[:vocab].detach().float()
    emb_unit = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    head = model.reasoner.get_output_embeddings()
    head_dtype = head.weight.dtype
    readings: list[LatentReading] = []
    for start in range(0, latents.shape[0], CHUNK):
        x = latents[start : start + CHUNK].to(emb.device).float()
        cos = (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ emb_unit.T  # (n, V)
        near_s, near_i = cos.topk(min(top_k, vocab), dim=-1)
        probs = head(x.to(head_dtype)).float()[:, :vocab].softmax(-1)  # (n, V)
        lens_p, lens_i = probs.topk(min(top_k, vocab), dim=-1)
        norms = x.norm(dim=-1)
        for r in range(x.shape[0]):
            readings.append(
                LatentReading(
                    nearest=[
                        (tok.decode([i]), s)
                        for i, s in zip(near_i[r].tolist(), near_s[r].tolist(), strict=True)
                    ],
                    lens=[
                        (tok.decode([i]), p)
                        for i, p in zip(lens_i[r].tolist(), lens_p[r].tolist(), strict=True)
                    ],
                    norm=float(norms[r]),
                )
            )
    return readings
