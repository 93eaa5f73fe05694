"""API keys bound to tenants: hashes only, scopes enforced on every route, another tenant's memory is 404."""

import sqlite3

import httpx
import openai
import pytest

from latentmem.cli import main
from latentmem.serve.keys import KEYS_FILE, KeyStore, KeyStoreError
from serve_fixtures import running_server

CHAT = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_keys_are_stored_as_hashes_and_revocable(tmp_path):
    store = KeyStore(tmp_path / KEYS_FILE)
    secret, key = store.create(user="alice", agent="a1")
    assert store.verify(secret) == key
    raw = sqlite3.connect(tmp_path / KEYS_FILE).execute("SELECT * FROM api_keys").fetchall()
    assert secret.split("_", 2)[2] not in repr(raw)  # only the hash is kept (the secret may hold "_")
    assert store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    store.revoke(key.id)
    assert store.verify(secret) is None and not store.has_active()
    with pytest.raises(KeyStoreError):
        store.revoke(key.id)
    with pytest.raises(KeyStoreError):
        store.create()  # a tenant key needs a user


def test_cli_keys_workflow_and_refusing_an_open_public_server(tmp_path, capsys):
    store = str(tmp_path / "srv")
    assert main(["serve", "--host", "0.0.0.0", "--store", store]) == 2
    assert "without API keys" in capsys.readouterr().err
    assert main(["serve", "keys", "create", "--store", store, "--user", "alice"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("lmk_")
    assert main(["serve", "keys", "list", "--store", store]) == 0
    key_id = secret.split("_")[1]
    assert f"{key_id}  user=alice  active" in capsys.readouterr().out
    assert main(["serve", "keys", "revoke", "--store", store, key_id]) == 0
    assert main(["serve", "keys", "list", "--store", store, "--json"]) == 0
    assert '"revoked_at": null' not in capsys.readouterr().out


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    with running_server(tmp) as (url, keys):
        tokens = {
            "alice": keys.create(user="alice")[0],
            "bob": keys.create(user="bob")[0],
            "alice-a1": keys.create(user="alice", agent="a1")[0],
            "admin": keys.create(admin=True)[0],
        }
        yield url, tokens


def _as(keyed, who: str | None) -> httpx.Client:
    url, tokens = keyed
    headers = {} if who is None else {"Authorization": f"Bearer {tokens[who]}"}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def test_requests_without_a_valid_key_are_401(keyed):
    url, _ = keyed
    assert httpx.get(f"{url}/healthz").json()["auth"] == "keys"
    for headers in ({}, {"Authorization": "Bearer lmk_000000000000_" + "x" * 43}, {"X-Api-Key": "nope"}):
        response = httpx.get(f"{url}/v1/memories", params={"user_id": "alice"}, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_a_key_acts_only_in_its_own_scope(keyed):
    alice, bob = _as(keyed, "alice"), _as(keyed, "bob")
    added = alice.post("/v1/memories", json={"text": "Alice's secret plan"}).json()["results"][0]
    assert added["user_id"] == "alice"  # the key's user, not sent by the client
    memory_id = added["id"]
    # Naming another user is refused, on every route that takes a scope.
    assert alice.post("/v1/memories", json={"text": "x", "user_id": "bob"}).status_code == 403
    assert alice.get("/v1/memories", params={"user_id": "bob"}).status_code == 403
    assert alice.post("/v1/memories/search", json={"query": "plan", "user_id": "bob"}).status_code == 403
    # Another tenant's id reads exactly like a missing one.
    missing = bob.get("/v1/memories/999999")
    for response in (
        bob.get(f"/v1/memories/{memory_id}"),
        bob.put(f"/v1/memories/{memory_id}", json={"text": "overwritten"}),
        bob.delete(f"/v1/memories/{memory_id}"),
        bob.get(f"/v1/memories/{memory_id}/history"),
    ):
        assert response.status_code == 404 and response.json() == missing.json()
    assert bob.get("/v1/memories", params={"user_id": "bob"}).json()["results"] == []
    assert bob.post("/v1/memories/search", json={"query": "secret plan"}).json()["results"] == []
    assert bob.delete("/v1/memories", params={"user_id": "bob"}).json()["deleted"] == 0
    assert alice.get(f"/v1/memories/{memory_id}").json()["memory"] == "Alice's secret plan"


def test_an_agent_bound_key_stays_in_its_agent(keyed):
    scoped, alice = _as(keyed, "alice-a1"), _as(keyed, "alice")
    mine = scoped.post("/v1/memories", json={"text": "a1 note"}).json()["results"][0]
    assert (mine["user_id"], mine["agent_id"]) == ("alice", "a1")
    assert scoped.get("/v1/memories", params={"agent_id": "a2"}).status_code == 403
    other = alice.post("/v1/memories", json={"text": "a2 note", "agent_id": "a2"}).json()["results"][0]
    assert scoped.get(f"/v1/memories/{other['id']}").status_code == 404
    assert alice.get(f"/v1/memories/{mine['id']}").status_code == 200  # the user's key sees its agents


def test_chat_checks_the_user_and_keeps_tenants_apart(keyed):
    alice, bob = _as(keyed, "alice"), _as(keyed, "bob")
    assert alice.post("/v1/chat/completions", json={**CHAT, "user": "bob"}).status_code == 403
    alice.post("/v1/memories", json={"text": "Alice's bank PIN is 1234"})
    memory = {"retrieve": 3, "session": "shared-name", "write": True}
    first = alice.post("/v1/chat/completions", json={**CHAT, "memory": memory}).json()
    assert first["memory"]["used"] and first["memory"]["written"]
    theirs = bob.post(
        "/v1/chat/completions", json={**CHAT, "memory": {"retrieve": 3, "session": "shared-name"}}
    )
    report = theirs.json()["memory"]
    assert report["used"] == []  # nothing of alice's, though bob asked for the same session name
    mine = alice.post("/v1/chat/completions", json={**CHAT, "memory": {"session": "shared-name"}}).json()
    assert theirs.json()["usage"]["prompt_tokens"] < mine["usage"]["prompt_tokens"]


def test_admin_keys_manage_keys_and_read_any_scope(keyed):
    admin, alice = _as(keyed, "admin"), _as(keyed, "alice")
    memory_id = alice.post("/v1/memories", json={"text": "for the admin"}).json()["results"][0]["id"]
    assert admin.get(f"/v1/memories/{memory_id}").json()["user_id"] == "alice"
    assert admin.get("/v1/memories", params={"user_id": "alice"}).json()["results"]
    assert alice.get("/v1/keys").status_code == 403
    assert alice.get("/metrics").status_code == 403
    assert admin.get("/metrics").status_code == 200
    created = admin.post("/v1/keys", json={"user": "carol"}).json()
    carol = httpx.Client(base_url=keyed[0], headers={"Authorization": f"Bearer {created['key']}"})
    assert carol.get("/v1/memories", params={"user_id": "carol"}).status_code == 200
    listed = admin.get("/v1/keys").json()["results"]
    assert "key" not in listed[0] and created["id"] in [k["id"] for k in listed]
    assert admin.delete(f"/v1/keys/{created['id']}").json()["revoked_at"] is not None
    assert carol.get("/v1/memories", params={"user_id": "carol"}).status_code == 401
    assert admin.delete(f"/v1/keys/{created['id']}").status_code == 404
