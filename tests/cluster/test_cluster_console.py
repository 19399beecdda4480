"""The SSH console on cluster nodes: it lists every node and runs a command
on any of them (DESIGN.md §10, Node console)."""

from __future__ import annotations

import json
from typing import Any

import asyncssh
from conftest import cluster, until

import metakit
from metakit.cluster import LocalServer
from metakit.ssh import Console
from metakit.testing import TIMEOUT


class Worker(metakit.Process):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        pass


async def test_the_console_sees_every_node(server: LocalServer, namespace: str) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = [key.export_public_key().decode()]
    a = metakit.Node("a@test", cluster=cluster(server, namespace))
    b = metakit.Node("b@test", cluster=cluster(server, namespace))
    async with a, b:
        await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
        console = await a.spawn(Console, authorized_keys=public)
        await b.spawn(Console, authorized_keys=public)  # b's own, which a's forwards to
        await b.spawn(Worker, name="only-on-b")
        await until(lambda: len(a.group_members("metakit-console")) == 2)
        host, port = await a.call(console, "address")
        async with asyncssh.connect(
            host, port, username="ada", client_keys=[key], known_hosts=None, config=None
        ) as conn:

            async def run(command: str) -> Any:
                return await conn.run(command, timeout=TIMEOUT)

            nodes = await run("nodes --json")
            assert json.loads(nodes.stdout) == ["a@test", "b@test"]
            here = json.loads((await run("ps --json")).stdout)
            assert "only-on-b" not in {r["name"] for r in here}
            there = await run("ps --json --node b@test")
            assert there.exit_status == 0, there.stdout
            assert "only-on-b" in {r["name"] for r in json.loads(there.stdout)}
            info = json.loads((await run("info only-on-b --node b@test --json")).stdout)
            assert info["behavior"] == "Worker"
            missing = await run("ps --node c@test")
            assert missing.exit_status == 1
            assert "no console on node 'c@test'" in missing.stdout
