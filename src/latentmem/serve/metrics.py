"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from latentmem.serve.backend import ModelLoad

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class _Load(Collector):
    """The backend's load per model, read when scraped: rows decoding, requests waiting, and the batches
    run with the rows they carried (their ratio is the mean batch size)."""

    def __init__(self, load_now: Callable[[], list[ModelLoad]]) -> None:
        self.load_now = load_now

    def collect(self) -> Iterator[Metric]:
        decoding = GaugeMetricFamily("latentmem_decoding", "requests being decoded", labels=["model"])
        waiting = GaugeMetricFamily("latentmem_waiting", "requests waiting to be decoded", labels=["model"])
        batches = CounterMetricFamily(
            "latentmem_batches",
            "batched forward work: decode steps of the continuously batched reasoner, generate calls of "
            "a weaver or recall memory",
            labels=["model"],
        )
        rows = CounterMetricFamily(
            "latentmem_batch_rows", "requests those batches carried, summed", labels=["model"]
        )
        for load in self.load_now():
            decoding.add_metric([load.model], load.decoding)
            waiting.add_metric([load.model], load.waiting)
            batches.add_metric([load.model], load.batches)
            rows.add_metric([load.model], load.rows)
        yield from (decoding, waiting, batches, rows)


class Metrics:
    """requests (by route, method, status), request latency, tokens (prompt / completion) and latent
    insertions per model, memories retrieved and written by chat, and the backend's load per model
    (`_Load` over the backend's `load_now`)."""

    def __init__(self, load_now: Callable[[], list[ModelLoad]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Load(load_now))
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
