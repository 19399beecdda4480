"""A node with some traffic, and the observer's live page of it.

What there is to see: a supervisor keeping four workers (one of them gives up
now and then, so the tree counts restarts), a TCP echo server and a client
pinging it (the metas table shows their bytes per second), a clock event
with three subscribers, and a slow consumer whose mailbox fills up to its
bound. ``--processes N`` adds N idle processes (try 10000: the table stays
quick, the sampling and sorting are done on the server, the page gets the
top rows only).

The observer listens on 127.0.0.1 and wants a token, made for this run and
printed in the URL; ``--actions`` lets the page send messages, exit and kill.

Run: python examples/observer_demo.py [--port N] [--processes N] [--actions]
Then open the URL it prints; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any

import metakit
from metakit import PID, ChildSpec, Meta, Process, Supervisor
from metakit.framing import Line
from metakit.observer import Observer
from metakit.tcp import TCPClient, TCPMessage, TCPServer


class Every(Meta):
    """A timer as a meta: sends ``message`` to its parent every ``period`` seconds."""

    def __init__(self, period: float, message: Any) -> None:
        self.period = period
        self.message = message

    async def start(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.send(self.parent, self.message)


class Echo(Process):
    """A TCP echo server: every line comes back."""

    async def init(self) -> None:
        self.server = TCPServer("127.0.0.1", 0, framing=Line(max_length=4096))
        await self.spawn_meta(self.server)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address

    def handle_message(self, sender: PID, message: Any) -> None:
        if isinstance(message, TCPMessage):
            self.send(message.conn, TCPMessage(message.conn, message.data))


class Pinger(Process):
    """Pings the echo server over TCP, and feeds the slow consumer."""

    async def init(self, host: str, port: int) -> None:
        self.conn = await self.spawn_meta(TCPClient(host, port, framing=Line()))
        await self.spawn_meta(Every(0.05, "ping"))
        self.pongs = 0
        self.refused = 0
        self.waiting: list[metakit.Caller] = []

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        """``"ready"``: answered once the first pong is back (traffic flows)."""
        if self.pongs:
            return True
        self.waiting.append(sender)
        return metakit.NO_REPLY

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case "ping":
                self.send(self.conn, TCPMessage(self.conn, b"ping %d" % self.pongs))
                try:
                    self.send("backlog", self.pongs)
                except metakit.MailboxFull:
                    self.refused += 1  # it is behind: the observer shows it full
            case TCPMessage():
                self.pongs += 1
                for caller in self.waiting:
                    self.reply(caller, True)
                self.waiting.clear()

    def handle_inspect(self) -> dict[str, str]:
        return {"pongs": str(self.pongs), "refused by backlog": str(self.refused)}


class Backlog(Process):
    """A slow consumer: a message every 0.2 s, while more arrive."""

    async def handle_message(self, sender: PID, message: Any) -> None:
        await asyncio.sleep(0.2)


class Clock(Process):
    """Produces the event ``tick`` twice a second."""

    async def init(self) -> None:
        await self.register_event("tick")
        await self.spawn_meta(Every(0.5, "tick"))
        self.ticks = 0

    def handle_message(self, sender: PID, message: Any) -> None:
        self.ticks += 1
        self.send_event("tick", self.ticks)


class Listener(Process):
    """Subscribes to ``tick``."""

    async def init(self) -> None:
        self.monitor_event("tick")
        self.seen = 0

    def handle_message(self, sender: PID, message: Any) -> None:
        self.seen += 1

    def handle_inspect(self) -> dict[str, str]:
        return {"ticks seen": str(self.seen)}


class Worker(Process):
    """Does a little work now and then; a ``flaky`` one stops after a while."""

    async def init(self, flaky: bool = False) -> None:
        self.flaky = flaky
        self.jobs = 0
        await self.spawn_meta(Every(0.1, "job"))

    def handle_message(self, sender: PID, message: Any) -> None:
        self.jobs += 1
        if self.flaky and self.jobs >= 40:
            raise metakit.Stop("tired")  # abnormal: the supervisor restarts it

    def handle_inspect(self) -> dict[str, str]:
        return {"jobs": str(self.jobs)}


class Idle(Process):
    """Does nothing: there to make the node big."""


async def main(node: metakit.Node, port: int, processes: int, actions: bool) -> None:
    await node.spawn(
        Supervisor,
        [ChildSpec(Worker, name=f"worker-{n}") for n in (1, 2, 3)]
        + [ChildSpec(Worker, kwargs={"flaky": True}, name="worker-4")],
        name="workers",
    )
    await node.spawn(Backlog, name="backlog", mailbox_size=200)
    await node.spawn(Clock, name="clock")
    for n in (1, 2, 3):
        await node.spawn(Listener, name=f"listener-{n}")
    echo = await node.spawn(Echo, name="echo")
    host, echo_port = await node.call(echo, "address")
    pinger = await node.spawn(Pinger, host, echo_port, name="pinger")
    for _ in range(processes):
        await node.spawn(Idle)
    observer = await node.spawn(
        Observer, port=port, token=secrets.token_urlsafe(16), allow_actions=actions, name="observer"
    )
    # The URL once traffic flows: a page's first frame (the whole one) shows it.
    await node.call(pinger, "ready", timeout=10.0)
    print(f"observer at {await node.call(observer, 'url')}", flush=True)
    await asyncio.Event().wait()  # until Ctrl-C (metakit.run stops the node)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A node with traffic, and its observer.")
    parser.add_argument("--port", type=int, default=8150, help="the page's port (0: a free one)")
    parser.add_argument("--processes", type=int, default=0, help="idle processes to add")
    parser.add_argument("--actions", action="store_true", help="allow send, exit and kill")
    args = parser.parse_args()
    metakit.run(main, args.port, args.processes, args.actions, node_name="demo@localhost")
