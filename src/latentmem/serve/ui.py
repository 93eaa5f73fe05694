"""`GET /ui`: the inspector page, rendered on the server (Jinja2, autoescaped; no front-end build).

A person browses the memories of a scope (paginated), searches them, opens one memory's history, and sees
the recent chats of the scope: which memories each used and wrote, where a weaver inserted latents and
what recall memory recalled. The page is plain HTML forms (GET), so it works without JavaScript.

Keys work as on the API: the page's caller is the key's tenant and sees only its own scopes (another
user's scope answers 403, another tenant's memory id the same as a missing one). A browser cannot send
an `Authorization` header from a link, so `POST /ui/login` takes a key from a form and keeps it in an
HttpOnly, SameSite=Strict cookie scoped to `/ui` (the API itself never reads that cookie, so it adds no
cross-site request risk there); `POST /ui/logout` clears it. An open server (no keys, loopback only) needs
no login.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations.
import collections
import dataclasses
import threading
import urllib.parse

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentmem.memory.base import MemoryNotFoundError, Scope
from latentmem.serve.auth import Authenticator, Principal, _token
from latentmem.serve.errors import ServeError
from latentmem.serve.memory_api import iso
from latentmem.serve.stores import Stores

COOKIE = "latentmem_key"
PAGE = 50  # memories per page


@dataclasses.dataclass(frozen=True)
class ChatRecord:
    """What the inspector shows of one chat: its scope, the question, the reply and what memory did."""

    id: str
    created: float
    model: str
    scope: Scope | None
    query: str | None
    reply: str
    used: tuple[str, ...]
    written: tuple[str, ...]
    insertions: tuple[tuple[int, int], ...]  # (after_token, latents)
    recalls: tuple[tuple[int, int, str], ...]  # (at_token, bank_id, text)


class RecentChats:
    """The last `size` chats of this process, newest first (kept in memory only: a window to inspect,
    not a log)."""

    def __init__(self, size: int = 200) -> None:
        self._chats: collections.deque[ChatRecord] = collections.deque(maxlen=size)
        self._lock = threading.Lock()  # chats are recorded from the event loop, read by page renders

    def add(self, chat: ChatRecord) -> None:
        if len(chat.reply) > 500:  # what a table cell shows
            chat = dataclasses.replace(chat, reply=chat.reply[:500] + "…")
        with self._lock:
            self._chats.appendleft(chat)

    def visible(self, scope: Scope, limit: int = 20) -> list[ChatRecord]:
        """The newest chats `scope` sees (a user's scope sees its agents' chats too)."""
        with self._lock:
            chats = [c for c in self._chats if c.scope is not None and scope.sees(c.scope)]
        return chats[:limit]


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latentmem inspector</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.error{color:#a00}.muted{color:#666}section{margin:1.5em 0}
</style></head><body>
<h1>latentmem inspector</h1>
{% if login %}
<section id="login"><p>{{ login }}</p>
<form method="post" action="/ui/login"><label>API key <input type="password" name="key" id="key"></label>
<button type="submit" id="login-submit">Sign in</button></form></section>
{% else %}
<p class="muted" id="caller">{{ caller }}
{% if keyed %}<form method="post" action="/ui/logout" style="display:inline"><button id="logout">Sign out</button></form>{% endif %}</p>
<form method="get" action="/ui" id="scope-form">
<label>user <input name="user" id="user" value="{{ user or '' }}" {{ 'readonly' if user_fixed }}></label>
<label>agent <input name="agent" id="agent" value="{{ agent or '' }}"></label>
<label>search <input name="q" id="q" value="{{ q or '' }}"></label>
<button type="submit" id="go">Show</button></form>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
{% if q is not none and results is not none %}
<section id="results"><h2>Search: {{ q }}</h2>
<table><tr><th>score</th><th>id</th><th>memory</th></tr>
{% for hit in results %}<tr><td>{{ '%.3f' % hit.score }}</td><td><a href="{{ link(memory=hit.record.id) }}">{{ hit.record.id }}</a></td><td>{{ hit.record.text }}</td></tr>
{% else %}<tr><td colspan="3">nothing found</td></tr>{% endfor %}</table></section>
{% endif %}
{% if history is not none %}
<section id="history"><h2>Memory {{ selected.id }}</h2><p>{{ selected.text }}</p>
<table><tr><th>version</th><th>text</th><th>written</th><th>replaced</th></tr>
{% for v in history %}<tr><td>{{ v.version }}</td><td>{{ v.text }}</td><td>{{ iso(v.updated_at) }}</td><td>{{ iso(v.replaced_at) }}</td></tr>
{% else %}<tr><td colspan="4">no earlier versions</td></tr>{% endfor %}</table></section>
{% endif %}
{% if memories is not none %}
<section id="memories"><h2>Memories</h2>
<table><tr><th>id</th><th>memory</th><th>user</th><th>agent</th><th>session</th><th>updated</th></tr>
{% for m in memories %}<tr><td><a href="{{ link(memory=m.id) }}">{{ m.id }}</a></td><td>{{ m.text }}</td><td>{{ m.scope.user or '' }}</td><td>{{ m.scope.agent or '' }}</td><td>{{ m.scope.session or '' }}</td><td>{{ iso(m.updated_at) }}</td></tr>
{% else %}<tr><td colspan="6">no memories in this scope</td></tr>{% endfor %}</table>
{% if next_after %}<p><a id="next" href="{{ link(after=next_after) }}">next page</a></p>{% endif %}</section>
<section id="chats"><h2>Recent chats</h2>
<table><tr><th>when</th><th>model</th><th>question</th><th>reply</th><th>used</th><th>written</th><th>latents inserted (after token: count)</th><th>recalled</th></tr>
{% for c in chats %}<tr><td>{{ iso(c.created) }}</td><td>{{ c.model }}</td><td>{{ c.query or '' }}</td><td>{{ c.reply }}</td>
<td>{% for i in c.used %}<a href="{{ link(memory=i) }}">{{ i }}</a> {% endfor %}</td>
<td>{% for i in c.written %}<a href="{{ link(memory=i) }}">{{ i }}</a> {% endfor %}</td>
<td>{% for after, n in c.insertions %}{{ 'prompt' if after < 0 else after }}: {{ n }}<br>{% endfor %}</td>
<td>{% for at, bank, text in c.recalls %}token {{ at }}: #{{ bank }} {{ text }}<br>{% endfor %}</td></tr>
{% else %}<tr><td colspan="8">no chats in this scope yet</td></tr>{% endfor %}</table></section>
{% endif %}
{% endif %}
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = _ENV.from_string(_TEMPLATE)


def _html(status: int = 200, **context) -> HTMLResponse:
    defaults = {
        "login": None,
        "caller": "",
        "keyed": False,
        "user": None,
        "agent": None,
        "user_fixed": False,
        "q": None,
        "error": None,
        "results": None,
        "history": None,
        "selected": None,
        "memories": None,
        "next_after": None,
        "chats": [],
        "link": lambda **_: "/ui",
        "iso": lambda t: "" if t is None else iso(t),
    }
    return HTMLResponse(_PAGE.render(**{**defaults, **context}), status_code=status)


def ui_router(stores: Stores, auth: Authenticator, recent: RecentChats) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def caller(request: Request) -> Principal | None:
        """The page's caller: an open server's, or the key in the cookie (or a header); None: sign in."""
        if auth.open():
            return Principal(None)
        token = request.cookies.get(COOKIE) or _token(request)
        return None if token is None else auth.principal(token)

    @router.get("")
    async def page(
        request: Request,
        user: str | None = None,
        agent: str | None = None,
        q: str | None = None,
        memory: int | None = None,
        after: int | None = None,
    ) -> Response:
        try:
            principal = caller(request)
        except ServeError as exc:
            return _html(401, login=f"{exc.message}. Sign in with an API key.")
        if principal is None:
            return _html(401, login="This server needs an API key.")
        user, agent, q = user or None, agent or None, q or None

        def link(**change) -> str:
            params = {"user": user, "agent": agent, **change}
            return "/ui?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})

        context = {
            "caller": "open server (loopback, no keys): every scope is visible"
            if principal.key_id is None
            else f"key {principal.key_id}: "
            + (
                "admin"
                if principal.admin
                else f"user {principal.user}" + (f", agent {principal.agent}" if principal.agent else "")
            ),
            "keyed": principal.key_id is not None,
            "user": user if principal.unrestricted else principal.user,
            "agent": agent,
            "user_fixed": not principal.unrestricted,
            "q": q,
            "link": link,
        }
        try:
            scope = principal.scope(user, agent, None)
        except ServeError as exc:
            return _html(exc.status, **context, error=exc.message)
        if scope is None:
            return _html(**context, error="Name a user (or an agent) to inspect its memories.")
        memories = await stores.run(stores.memory.list, scope, limit=PAGE + 1, after=after)
        context |= {
            "memories": memories[:PAGE],
            "next_after": memories[PAGE - 1].id if len(memories) > PAGE else None,
            "chats": recent.visible(scope),
        }
        if q is not None:
            context["results"] = await stores.run(stores.memory.search, q, scope, k=10)
        if memory is not None:
            try:
                context["selected"] = await stores.run(stores.memory.get, memory, scope)
                context["history"] = await stores.run(stores.memory.history, memory, scope)
            except MemoryNotFoundError:  # another tenant's memory reads as a missing one
                return _html(404, **context, error=f"no memory {memory} in this scope")
        return _html(**context)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        try:
            auth.principal(key)
        except ServeError as exc:
            return _html(401, login=f"{exc.message}. Try again.")
        response = RedirectResponse("/ui", status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/ui", secure=secure)
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/ui", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    return router
