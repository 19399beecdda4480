"""A node with a few workers and a console into it over SSH.

A supervisor keeps three ticking workers; one of them falls behind on
purpose, so ``ps --sort mailbox`` has something to show. The console serves
SSH on 127.0.0.1 and lets in the keys of ``--authorized-keys`` (default
``~/.ssh/authorized_keys``); with none there, it makes a key pair for this
run in a temporary directory and prints the command that uses it.

Run: python examples/ssh_console.py [--port N] [--authorized-keys FILE]
Then, in another terminal, what it prints: ssh -p PORT ... you@127.0.0.1
(try ps --sort mailbox, tree, info ticker-2, stats, help); Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import tempfile
from pathlib import Path
from typing import Any

import asyncssh

import metakit
from metakit import PID, ChildSpec, Process, Supervisor
from metakit.ssh import Console


class Ticker(Process):
    """Counts ticks; ``slow`` ones take a while over each, and fall behind."""

    async def init(self, period: float, slow: bool = False) -> None:
        self.period = period
        self.slow = slow
        self.ticks = 0
        self.send(self.pid, "tick")

    async def handle_message(self, sender: PID, message: Any) -> None:
        self.ticks += 1
        await asyncio.sleep(self.period)
        # A slow one queues two ticks for each it handles, up to its mailbox bound.
        for _ in range(2 if self.slow and self.ticks < 500 else 1):
            self.send(self.pid, "tick")

    def handle_inspect(self) -> dict[str, str]:
        return {"ticks": str(self.ticks), "slow": str(self.slow)}


def keys_for(path: str | None, scratch: Path) -> tuple[Any, str | None]:
    """The authorized keys, and the private key file to use when made here (in ``scratch``)."""
    given = Path(path or "~/.ssh/authorized_keys").expanduser()
    if given.exists():
        return str(given), None
    if path is not None:
        raise SystemExit(f"no such file: {given}")
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = scratch / "id_ed25519"
    private.write_bytes(key.export_private_key())
    private.chmod(0o600)
    return [key.export_public_key().decode()], str(private)


async def main(node: metakit.Node, port: int, authorized: Any, private: str | None) -> None:
    await node.spawn(
        Supervisor,
        [
            ChildSpec(Ticker, args=(0.5,), name="ticker-1"),
            ChildSpec(Ticker, args=(0.05, True), name="ticker-2"),
            ChildSpec(Ticker, args=(1.0,), name="ticker-3"),
        ],
        name="tickers",
    )
    console = await node.spawn(Console, port=port, authorized_keys=authorized, name="console")
    host, port = await node.call(console, "address")
    info = node.process_info(console)
    identity = f" -i {private}" if private else ""
    print(f"console host key {info.inspect['host_key']}", flush=True)
    print(
        f"ssh -p {port}{identity} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"{getpass.getuser()}@{host}",
        flush=True,
    )
    await asyncio.Event().wait()  # until Ctrl-C (metakit.run stops the node)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A node with an SSH console.")
    parser.add_argument("--port", type=int, default=0, help="the console's port (0: a free one)")
    parser.add_argument("--authorized-keys", metavar="FILE", help="who may log in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metakit-console-") as scratch:  # a made key goes
        authorized, private = keys_for(args.authorized_keys, Path(scratch))
        metakit.run(main, args.port, authorized, private, node_name="console-demo@localhost")
