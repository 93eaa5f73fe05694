"""`latentmem serve`: memory for agents over HTTP (`pip install 'latentmem[serve]'`).

OpenAI's chat API with memory as an extension (`chat_api`), mem0's memory API (`memory_api`), API keys
bound to tenants (`keys`, `auth`), the `/ui` inspector page (`ui`), all over a `GenerationBackend`
(`backend`) the app calls to generate: `batching.BatchingBackend` (continuous batching) in `latentmem
serve`. `mcp_server`: the memory store as MCP tools (`latentmem mcp`); `bench`: `latentmem bench serve`.
"""
