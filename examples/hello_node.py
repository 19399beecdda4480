"""A tour of the core: processes, send and call, a monitor, a supervisor.

A supervised counter takes a few messages, answers a call, then crashes;
we watch it go down with a monitor and see the supervisor restart it.

Run: python examples/hello_node.py
"""

from __future__ import annotations

from typing import Any

import metakit
from metakit import PID, Caller, ChildSpec, Down, Process, Supervisor


class Counter(Process):
    async def init(self) -> None:
        self.count = 0

    def handle_message(self, sender: PID, message: Any) -> None:
        if message == "crash":
            raise RuntimeError("asked to crash")
        self.count += message

    def handle_call(self, sender: Caller, request: Any) -> int:
        return self.count


class Main(Process):
    async def init(self) -> None:
        self.sup = await self.spawn(Supervisor, [ChildSpec(Counter, name="counter")])
        self.send(self.pid, "go")

    async def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case "go":
                for n in (1, 2, 3):
                    self.send("counter", n)
                print("count is", await self.call("counter", "get"))
                self.monitor("counter")
                self.send("counter", "crash")
            case Down(target, _, reason):
                print(f"{target} went down: {reason!r}")
                # The supervisor handled the exit before this call reaches it.
                [(_, pid)] = await self.call(self.sup, "which_children")
                print(f"restarted as {pid}, count is", await self.call(pid, "get"))
                raise metakit.Stop()


if __name__ == "__main__":
    print("exit reason:", metakit.run(Main))
