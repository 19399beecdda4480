"""The node console over SSH: exec commands and an interactive pty session,
with asyncssh's client and OpenSSH's ``ssh`` (skipped where it is missing)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import metakit
from metakit import ChildSpec, Node, Supervisor
from metakit.ssh import Console
from metakit.testing import TIMEOUT

SSH = shutil.which("ssh")


@pytest.fixture(scope="module")
def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


class Worker(metakit.Process):
    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return {"echo": request}

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        pass


class Stuffed(metakit.Process):
    """Holds its mailbox full: its handler waits for a gate nobody opens."""

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        await asyncio.Event().wait()


async def start(node: Node, key: asyncssh.SSHKey, **options: Any) -> tuple[str, int]:
    public = key.export_public_key().decode()
    pid = await node.spawn(Console, authorized_keys=[public], name="console", **options)
    host, port = await node.call(pid, "address")
    return host, port


async def run(address: tuple[str, int], key: asyncssh.SSHKey, command: str) -> Any:
    host, port = address
    async with asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None
    ) as conn:
        return await conn.run(command, timeout=TIMEOUT)


async def test_exec_commands_print_and_exit(node: Node, key: asyncssh.SSHKey) -> None:
    address = await start(node, key)
    worker = await node.spawn(Worker, name="worker")
    sup = await node.spawn(Supervisor, [ChildSpec(Worker, name="child")])
    stuffed = await node.spawn(Stuffed, name="stuffed")
    for i in range(20):
        node.send(stuffed, i)

    ps = await run(address, key, "ps --sort mailbox")
    assert ps.exit_status == 0, ps.stderr
    lines = ps.stdout.splitlines()
    assert lines[0].split()[:5] == ["PID", "NAME", "CLASS", "STATE", "MAILBOX"]
    assert lines[1].split()[1:3] == ["stuffed", "Stuffed"]  # the fullest first
    assert any(line.split()[1:3] == ["worker", "Worker"] for line in lines)

    rows = json.loads((await run(address, key, "ps --json")).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["stuffed"]["mailbox"] >= 18
    assert by_name["worker"]["pid"] == f"{worker.node}.{worker.id & 0xFFFFFFFF}"

    info = json.loads((await run(address, key, f"info {by_name['worker']['pid']} --json")).stdout)
    assert (info["name"], info["behavior"]) == ("worker", "Worker")
    tree = (await run(address, key, "tree")).stdout
    assert f"{sup.node}.{sup.id & 0xFFFFFFFF} Supervisor (one_for_one, 0 restarts)" in tree
    assert "Worker child" in tree
    names = (await run(address, key, "names")).stdout
    assert "console" in names
    assert "worker" in names
    metas = (await run(address, key, "metas")).stdout
    assert "SSHServer" in metas
    stats = json.loads((await run(address, key, "stats --json")).stdout)
    assert stats["node"] == node.name
    assert stats["processes"] >= 4
    assert (await run(address, key, "help")).exit_status == 0
    assert (await run(address, key, "events")).exit_status == 0

    # Unknown commands and targets: status 1, and why.
    unknown = await run(address, key, "rm -rf /")
    assert (unknown.exit_status, unknown.stdout) == (1, "unknown command: rm; try help\n")
    assert (await run(address, key, "info nobody")).exit_status == 1
    assert (await run(address, key, "ps --sort colour")).exit_status == 1


async def test_actions_are_refused_unless_allowed(node: Node, key: asyncssh.SSHKey) -> None:
    address = await start(node, key)
    worker = await node.spawn(Worker, name="worker")
    for command in ('call worker {"a": 1}', "kill worker", "exit worker normal", "send worker 1"):
        refused = await run(address, key, command)
        assert refused.exit_status == 1
        assert "actions are off" in refused.stdout
    assert worker in node.processes()
    # Never code: a Python expression is no command.
    assert (await run(address, key, "__import__('os').system('true')")).exit_status == 1


async def test_allowed_actions_take_json(node: Node, key: asyncssh.SSHKey) -> None:
    address = await start(node, key, allow_actions=True)
    worker = await node.spawn(Worker, name="worker")
    reply = await run(address, key, "call worker '{\"a\": [1, 2]}' --json")
    assert (reply.exit_status, json.loads(reply.stdout)) == (0, {"echo": {"a": [1, 2]}})
    assert (await run(address, key, "send worker not-json")).exit_status == 1
    assert (await run(address, key, "kill worker")).exit_status == 0
    await node.wait_exit(worker, timeout=TIMEOUT)


async def test_an_interactive_session_with_a_pty(node: Node, key: asyncssh.SSHKey) -> None:
    host, port = await start(node, key)
    await node.spawn(Worker, name="worker")
    async with asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None
    ) as conn:
        stdin, stdout, _ = await conn.open_session(term_type="xterm")
        prompt = f"{node.name}> "

        async def until(text: str) -> str:
            got = ""
            while text not in got:
                got += await asyncio.wait_for(stdout.read(4096), TIMEOUT)
            return got

        await until(prompt)
        stdin.write("names\r")  # the line editor echoes, and ends the line on Enter
        seen = await until(prompt)
        assert "worker" in seen
        stdin.write("nonsense\r")
        assert "unknown command: nonsense" in await until(prompt)
        stdin.write("quit\r")
        await asyncio.wait_for(stdout.channel.wait_closed(), TIMEOUT)
        assert stdout.channel.get_exit_status() == 0


async def test_the_console_takes_keys_only(node: Node, key: asyncssh.SSHKey) -> None:
    with pytest.raises(ValueError, match="authorized_keys"):
        await node.spawn(Console, authorized_keys=None)
    host, port = await start(node, key)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await run((host, port), stranger, "ps")
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(
            host, port, username="ada", password="guess", client_keys=None,
            known_hosts=None, config=None,
        ):  # fmt: skip
            pass


@pytest.mark.skipif(SSH is None, reason="OpenSSH's ssh is not installed")
async def test_openssh_exec_ps(node: Node, key: asyncssh.SSHKey, tmp_path: Path) -> None:
    host, port = await start(node, key)
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(key.export_private_key())
    key_file.chmod(0o600)
    argv = [
        SSH, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", str(key_file),
        "-p", str(port), f"ada@{host}",
    ]  # fmt: skip
    for command, status in (("ps", 0), ("nosuch", 1)):
        proc = await asyncio.create_subprocess_exec(
            *argv, command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )  # type: ignore[arg-type]
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == status, err
        if status == 0:
            assert out.split()[:3] == [b"PID", b"NAME", b"CLASS"]
