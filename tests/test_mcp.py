"""`latentmem mcp`: the memory tools over stdio, driven by the `mcp` package's own stdio client."""

import asyncio
import os
import sys

import pytest

mcp = pytest.importorskip("mcp", reason="needs the mcp package (the serve extra)")
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

EMBEDDER = "hash:32"


async def _session_run(store: str) -> dict:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "latentmem.cli", "mcp", "--store", store, "--embedder", EMBEDDER, "--user", "alice"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    async with stdio_client(params) as (read, write), mcp.ClientSession(read, write) as session:
        await session.initialize()

        async def call(tool: str, **arguments):
            result = await session.call_tool(tool, arguments)
            assert not result.is_error, result.content
            return result.structured_content

        tools = sorted(t.name for t in (await session.list_tools()).tools)
        bees = await call("add_memory", text="Alice keeps bees", metadata={"topic": "hobby"})
        boat = await call("add_memory", text="Alice sails a boat")
        theirs = await call("add_memory", text="Bob keeps bees too", user="bob")
        found = await call("search_memories", query="Alice keeps bees", k=1)
        listed = await call("list_memories")
        deleted = await call("delete_memory", memory_id=boat["id"])
        after = await call("list_memories")
        bobs = await call("list_memories", user="bob")
        refused = await session.call_tool("delete_memory", {"memory_id": theirs["id"]})  # not alice's
    return locals()


@pytest.mark.parametrize("kind", ["embedded", "qdrant-local"])
def test_mcp_tools_over_stdio(tmp_path, kind):
    """The same tools over the embedded store and over Qdrant (local mode), named as `serve --store` is."""
    if kind == "qdrant-local":
        pytest.importorskip("qdrant_client", reason="needs qdrant-client (the rag extra)")
    store = str(tmp_path / "store") if kind == "embedded" else f"qdrant+local://{tmp_path / 'qdrant'}"
    r = asyncio.run(asyncio.wait_for(_session_run(store), timeout=120))
    assert r["tools"] == ["add_memory", "delete_memory", "list_memories", "search_memories"]
    assert r["bees"]["event"] == "added"
    hits = r["found"]["result"]
    assert [h["id"] for h in hits] == [r["bees"]["id"]] and hits[0]["metadata"] == {"topic": "hobby"}
    assert [m["memory"] for m in r["listed"]["result"]] == ["Alice keeps bees", "Alice sails a boat"]
    assert r["deleted"] == {"id": r["boat"]["id"], "deleted": True}
    assert [m["id"] for m in r["after"]["result"]] == [r["bees"]["id"]]
    assert [m["memory"] for m in r["bobs"]["result"]] == ["Bob keeps bees too"]
    assert r["refused"].is_error  # another user's memory is not found in alice's scope
    if kind == "qdrant-local":
        assert (tmp_path / "qdrant").is_dir() and not (tmp_path / "store").exists()


def test_mcp_refuses_a_malformed_store_url(capsys):
    from latentmem.cli import main

    assert main(["mcp", "--store", "qdrant://db:port"]) == 2
    assert "--store 'qdrant://db:port'" in capsys.readouterr().err
