"""HTTP handlers backed by a pool of four supervised worker processes.

``WebHandler`` turns each request into a call to the next live worker of the
pool; the worker's answer (a dict, a str, None, or an aiohttp Response)
becomes the response. ``GET /crash`` makes a worker stop mid-request: that
request gets a 503, the supervisor starts a new worker under the same name,
and the pool carries on.

Run: python examples/web_hello.py [PORT]   (default 8080; 0 picks a free port)
Try: curl 'http://127.0.0.1:8080/hello?name=ada'
     curl -X POST --data-binary @README.md http://127.0.0.1:8080/count
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web

import metakit
from metakit import Caller, ChildSpec, Process, Supervisor
from metakit.web import WebHandler, WebRequest, WebServer

WORKERS = [f"worker-{i}" for i in range(4)]


class Worker(Process):
    async def init(self, number: int) -> None:
        self.number = number
        self.served = 0

    def handle_call(self, sender: Caller, request: WebRequest) -> Any:
        self.served += 1
        match request:
            case WebRequest(method="GET", path="/hello"):
                name = request.query.get("name", "world")
                return {"hello": name, "worker": self.number, "served": self.served}
            case WebRequest(method="POST", path="/count"):
                return {"bytes": len(request.body), "lines": request.body.count(b"\n")}
            case WebRequest(method="GET", path="/crash"):
                raise metakit.Stop("asked to crash")  # the supervisor restarts us
            case WebRequest(method="GET", path="/"):
                return f"metakit worker {self.number} at your service\n"
        return web.Response(status=404, text="no such page\n")


class Web(Process):
    async def init(self, port: int) -> None:
        children = [ChildSpec(Worker, args=(i,), name=name) for i, name in enumerate(WORKERS)]
        await self.spawn(Supervisor, children, link=True)
        handler = WebHandler(pool=WORKERS, timeout=5.0)
        await self.spawn_meta(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = WebServer("127.0.0.1", port, app)
        await self.spawn_meta(server)  # binds here: a busy port raises here
        print(f"listening on {server.url}", flush=True)


if __name__ == "__main__":
    metakit.run(Web, int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
