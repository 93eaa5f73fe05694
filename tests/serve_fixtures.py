"""Helpers for the server tests: the tiny models behind a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from latentmem.memgen import LatentMemoryModel, MemGenConfig
from latentmem.models import load_model
from latentmem.serve.app import ServeSettings, create_app
from latentmem.serve.backend import GenerationBackend
from latentmem.serve.batching import BatchingBackend
from latentmem.serve.keys import KEYS_FILE, KeyStore
from latentmem.serve.stores import CONVERSATIONS_FILE, StoreLocation, Stores

EMBEDDER = "hash:32"  # the weaver below reads 32-dim memory vectors: the store's own


def save_weaver(directory: Path, **config: Any) -> Path:
    """A tiny MemGen weaver (prompt and inference latents, reads memory vectors; `config` overrides
    `MemGenConfig` fields) saved to `directory`."""
    model, tok = load_model("tiny-qwen2", seed=0)
    config = MemGenConfig(
        **{
            "prompt_latents": 2,
            "inference_latents": 2,
            "max_inference_insertions": 2,
            "lora_r": 2,
            "memory_dim": 32,
            **config,
        }
    )
    LatentMemoryModel(model, tok, config).save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    tmp: Path,
    *,
    weaver: Path | None = None,
    backend: GenerationBackend | None = None,
    store: str | None = None,
    **settings,
) -> Iterator[tuple[str, KeyStore]]:
    """(base URL, key store) of a server over tiny-qwen2 (as "tiny-qwen2", batched as `latentmem serve`
    batches it) and `weaver` (as "weaver"), or over `backend`, with its memories at `store` (a `--store`
    value; default: an embedded store in `tmp`) and its keys and sessions in `tmp`; shut down (the
    backend closed) on exit."""
    if backend is None:
        backend = BatchingBackend.load("tiny-qwen2", memgen={"weaver": weaver} if weaver else None)
    location = StoreLocation.parse(store or str(tmp / "store"))
    stores = Stores(lambda: location.open_memory(EMBEDDER), tmp / CONVERSATIONS_FILE)
    keys = KeyStore(tmp / KEYS_FILE)
    app = create_app(backend, stores, keys, ServeSettings(host="127.0.0.1", **settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", keys
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        backend.close()
        stores.close()
        keys.close()


def wait_until_serving(server: subprocess.Popen, url: str, seconds: float = 60) -> None:
    """Poll `url`/healthz until the `latentmem serve` process `server` answers; fail if it exits or
    `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)  # also after a non-200 answer, so that the loop never spins


def save_recall(directory: Path, facts: list[str], dim: int = 16) -> Path:
    """An untrained recall memory on tiny-qwen2 (fresh head and projector, recall-token rows) and a bank
    of `facts` with random `dim`-vectors, saved as `latentmem serve --recall NAME=DIR` reads them."""
    import numpy as np

    from latentmem.recall.bank import MemoryBank
    from latentmem.recall.memory import RecallMemory

    model, tok = load_model("tiny-qwen2", seed=0)
    RecallMemory.attach(model, tok, dim).save(directory, model)
    bank = MemoryBank(dim)
    bank.add(facts, np.random.default_rng(0).standard_normal((len(facts), dim)).astype(np.float32))
    bank.save(directory / "bank")
    return directory
