"""A UDP echo server: every datagram comes back to its sender.

``Echo`` owns a ``UDPServer``; each datagram arrives as ``UDPPacket(server,
addr, data)`` and goes back by sending the same packet to the server. If a
reply's destination has gone (ICMP port unreachable), a ``UDPError`` arrives
instead of anything crashing. Datagrams dropped under load are counted, not
hidden: the counters are printed when the server stops.

Run: python examples/udp_echo.py [PORT]   (default 9000; 0 picks a free port)
Try: nc -u 127.0.0.1 9000   then type lines; Ctrl-C stops the server.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import metakit
from metakit import PID, Process
from metakit.udp import UDPError, UDPPacket, UDPServer


class Echo(Process):
    async def init(self, port: int) -> None:
        self.server = UDPServer("127.0.0.1", port)
        await self.spawn_meta(self.server)  # binds here: a busy port raises here
        host, port = self.server.address
        print(f"listening on {host}:{port}", flush=True)

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case UDPPacket(server, addr, data):
                self.send(server, UDPPacket(server, addr, data))
            case UDPError(_, addr, error):
                print(f"cannot reach {addr}: {error}", flush=True)

    def terminate(self, reason: Any) -> None:
        counters = dataclasses.asdict(self.server.statistics())
        print("stopped:", ", ".join(f"{k}={v}" for k, v in counters.items()), flush=True)


if __name__ == "__main__":
    metakit.run(Echo, int(sys.argv[1]) if len(sys.argv) > 1 else 9000)
