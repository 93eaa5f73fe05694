"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """requests (by route, method, status), request latency, tokens (prompt / completion) and latent
    insertions per model, memories retrieved and written by chat."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "latentmem_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "latentmem_request_seconds",
            "time to answer an HTTP request (a streamed one: until its last chunk)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens = Counter(
            "latentmem_tokens", "tokens read and generated", ["model", "kind"], registry=self.registry
        )
        self.insertions = Counter(
            "latentmem_latent_insertions",
            "latent blocks a weaver inserted",
            ["model"],
            registry=self.registry,
        )
        self.memories = Counter(
            "latentmem_chat_memories", "memories chat retrieved and wrote", ["event"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
