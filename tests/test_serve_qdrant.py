"""`--store` on Qdrant: the URL forms, one-line errors for malformed ones, the memory API and chat memory
end to end on Qdrant's local mode (no Qdrant server binary here), and `latentmem serve` itself with its
keys and sessions in SQLite in the state directory."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from latentmem.cli import main
from latentmem.errors import ConfigError
from latentmem.memory.base import MemoryStoreError
from latentmem.memory.qdrant import QdrantBackend
from latentmem.memory.vector import VectorMemory
from latentmem.serve.keys import KEYS_FILE
from latentmem.serve.stores import CONVERSATIONS_FILE, StoreLocation
from serve_fixtures import EMBEDDER, free_port, running_server, wait_until_serving

# The memory API's own tests, collected here again over this module's `http` (a Qdrant-backed server).
from test_serve import (  # noqa: F401
    test_add_get_update_history_delete,
    test_add_messages_search_and_filters,
    test_pagination_is_complete_and_stable,
    test_scoped_delete_all,
)

pytest.importorskip("qdrant_client")
# qdrant-client warns, from a thread of its own, that it could not ask the unreachable server its version.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

MODEL = "tiny-qwen2"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("qdrant://db:6334/notes", {"kind": "qdrant", "url": "http://db:6334", "collection": "notes"}),
        ("qdrant://db", {"kind": "qdrant", "url": "http://db:6333", "collection": "latentmem"}),
        ("qdrant://[::1]:7000/", {"kind": "qdrant", "url": "http://[::1]:7000", "collection": "latentmem"}),
        ("qdrant+local:///srv/q", {"kind": "qdrant-local", "path": Path("/srv/q"), "url": None}),
        ("/srv/store", {"kind": "embedded", "path": Path("/srv/store"), "url": None}),
    ],
)
def test_store_forms(spec, expected):
    location = StoreLocation.parse(spec)
    assert {k: getattr(location, k) for k in expected} == expected


def test_state_dir_is_beside_an_embedded_store_and_given_for_qdrant(tmp_path):
    assert StoreLocation.parse(str(tmp_path)).state_dir() == tmp_path
    assert StoreLocation.parse("qdrant://db").state_dir(tmp_path / "s") == tmp_path / "s"
    assert StoreLocation.parse("qdrant://db").state_dir() == Path("~/.latentmem/server").expanduser()


@pytest.mark.parametrize(
    "spec",
    [
        "qdrant://",
        "qdrant://db:port/x",
        "qdrant://db:99999",
        "qdrant://db/two/parts",
        "qdrant://db/x?timeout=3",
        "qdrant://me:secret@db",
        "qdrant+local://relative/dir",
        "qdrant+local:///",
        "qdrnt://db",
    ],
)
def test_a_malformed_store_url_is_one_line_and_exit_2(spec, capsys, tmp_path):
    with pytest.raises(ConfigError):
        StoreLocation.parse(spec)
    assert main(["serve", "--store", spec, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "qdrant://HOST[:PORT][/COLLECTION]" in err


def test_an_unreachable_qdrant_server_is_a_store_error():
    with pytest.raises(MemoryStoreError, match="cannot use Qdrant at http://127.0.0.1"):
        StoreLocation.parse(f"qdrant://127.0.0.1:{free_port()}").open_memory(EMBEDDER)


def test_a_qdrant_server_gone_after_opening_is_a_store_error():
    """A call that reaches no server (it went down, or never was) is a MemoryStoreError naming the
    operation, not the client's own exception."""
    backend = QdrantBackend(url=f"http://127.0.0.1:{free_port()}", collection="gone")
    with pytest.raises(MemoryStoreError, match="Qdrant count on collection 'gone' failed"):
        backend.count()
    with pytest.raises(MemoryStoreError, match="Qdrant fetch"):
        backend.fetch([1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-qdrant")
    with running_server(tmp, store=f"qdrant+local://{tmp / 'qdrant'}", default_max_tokens=4) as (url, _):
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def test_chat_memory_retrieve_write_and_session_on_qdrant(http):
    added = http.post("/v1/memories", json={"text": "Jo grows tomatoes", "user_id": "jo"}).json()
    ask = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "what does Jo grow?"}],
        "max_tokens": 2,
        "user": "jo",
        "memory": {"retrieve": 1, "session": "s1", "write": True},
    }
    report = http.post("/v1/chat/completions", json=ask).json()["memory"]
    assert report["used"] == [added["results"][0]["id"]] and len(report["written"]) == 1
    written = http.get(f"/v1/memories/{report['written'][0]}").json()
    assert written["memory"].startswith("user: what does Jo grow?") and written["metadata"]["session"] == "s1"


def test_latentmem_serve_on_qdrant_local_keeps_keys_and_sessions_in_the_state_dir(tmp_path):
    qdrant, state, port = tmp_path / "qdrant", tmp_path / "state", free_port()
    store = ["--store", f"qdrant+local://{qdrant}", "--state-dir", str(state)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "latentmem.cli", "serve"]
    created = subprocess.run(
        [*cli, "keys", "create", *store, "--user", "kim", "--json"], env=env, capture_output=True, text=True
    )
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["key"]
    assert (state / KEYS_FILE).exists() and not (qdrant / KEYS_FILE).exists()
    command = [*cli, "--model", MODEL, *store, "--embedder", EMBEDDER, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}
    try:
        wait_until_serving(server, url)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            fact = http.post("/v1/memories", json={"text": "Kim sails on Sundays"}).json()["results"][0]
            chat = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "when does Kim sail?"}],
                "max_tokens": 2,
                "memory": {"retrieve": 1, "session": "weekend", "write": True},
            }
            report = http.post("/v1/chat/completions", json=chat).json()["memory"]
            assert report["used"] == [fact["id"]]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    assert (state / CONVERSATIONS_FILE).exists()
    memory = VectorMemory.qdrant(path=qdrant, embedder=EMBEDDER)  # the server let go of the directory
    try:
        assert [str(r.id) for r in memory.list(user="kim")] == [fact["id"], *report["written"]]
    finally:
        memory.close()
