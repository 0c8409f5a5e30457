"""A websocket chat in which every uvicorn worker is a Hermes node.

    uvicorn examples.chat.app:app --workers 2          # then open http://127.0.0.1:8000/
    uvicorn examples.chat.app:app --port 8001 &        # or separate servers, same cluster
    uvicorn examples.chat.app:app --port 8002

Each worker starts a node in the ASGI lifespan (``hermes.start``, a unique
name per worker) in the cluster named by ``HERMES_CLUSTER`` (default
``"local"``: the local pg service, started on first use). Each websocket
client is a ``hermes.subscription`` to the room: a message typed on any worker
is published once and reaches every client on every worker.

Protocol: the server sends ``{"welcome": node, "nodes": [...]}`` once the
client is subscribed (``?peers=N``: after waiting for N other nodes), then
``{"user", "text", "node"}`` per message; the client sends plain text.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import hermes

ROOM = "chat:lobby"


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with hermes.start(cluster=os.environ.get("HERMES_CLUSTER", "local")) as node:
        app.state.node = node
        yield


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.query_params.get("user", "anonymous")
    peers = int(websocket.query_params.get("peers", "0"))
    async with hermes.subscription(ROOM, maxsize=1000) as messages:  # a slow browser loses the oldest
        nodes = await hermes.wait_for_nodes(peers, timeout=30) if peers else hermes.nodes()
        await websocket.send_json({"welcome": hermes.node(), "nodes": nodes})
        forward = asyncio.create_task(_forward(messages, websocket))
        try:
            while True:
                text = await websocket.receive_text()
                hermes.publish(ROOM, {"user": user, "text": text, "node": hermes.node()})
        except WebSocketDisconnect:
            pass
        finally:
            forward.cancel()


async def _forward(messages: Any, websocket: WebSocket) -> None:
    async for message in messages:
        await websocket.send_json(message)


PAGE = """<!doctype html>
<meta charset="utf-8"><title>Hermes chat</title>
<style>body{font:16px sans-serif;max-width:40em;margin:2em auto}#log{height:20em;overflow:auto;border:1px solid #ccc;padding:.5em}</style>
<h1>Hermes chat</h1>
<p id="who"></p><div id="log"></div>
<form id="f"><input id="text" autocomplete="off" size="50" autofocus> <button>Send</button></form>
<script>
const user = prompt("Your name?") || "anonymous";
const ws = new WebSocket(`ws://${location.host}/ws?user=${encodeURIComponent(user)}`);
const log = document.getElementById("log");
function show(line) { const p = document.createElement("div"); p.textContent = line; log.append(p); log.scrollTop = 1e9; }
ws.onmessage = (event) => {
  const m = JSON.parse(event.data);
  if (m.welcome) document.getElementById("who").textContent = `connected to node ${m.welcome}`;
  else show(`${m.user} (via ${m.node}): ${m.text}`);
};
document.getElementById("f").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) ws.send(input.value);
  input.value = "";
};
</script>
"""

app = Starlette(routes=[Route("/", page), WebSocketRoute("/ws", chat)], lifespan=lifespan)
