"""Console: a node console over SSH (Erlang's ssh shell, Elixir's remsh), as a process.

::

    console = await node.spawn(Console, authorized_keys="~/.ssh/authorized_keys")
    host, port = await node.call(console, "address")
    # ssh -p PORT you@127.0.0.1        a prompt: ps, info, tree, names, metas, events, stats
    # ssh -p PORT you@127.0.0.1 ps     prints the table and exits 0 (--json for scripts)

The console owns an :class:`~metakit.ssh.SSHServer` (key authentication
only, 127.0.0.1 by default) and reads the node only through its public
introspection (``processes``, ``process_info``, ``metas``, ``meta_info``,
``names``, ``events``, ``nodes``). A command is a word and arguments, never
code: there is no ``eval``, and the actions (``send``, ``call``, ``exit``,
``kill``, with JSON values) exist only with ``allow_actions=True``. An exec
session (``ssh ... CMD``) runs one command and exits with status 0, or 1 for
an unknown command or target; an interactive one (a pty: asyncssh's line
editor, with history) gives a prompt until ``quit`` or ``^D``.

On a cluster node every console joins the group ``metakit-console``, and
``--node NAME`` after a command runs it on that node's console (``nodes``
lists them), which answers with its own rules (its own ``allow_actions``).
"""

from __future__ import annotations

import inspect
import json
import shlex
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

from .._introspect import open_fds, rss_kib
from ..errors import MetakitError, NoProcess
from ..ids import PID, Alias
from ..messages import Caller
from ..process import Process
from .messages import SSHConnect, SSHDisconnect, SSHMessage
from .server import SSHServer

__all__ = ["Console"]

GROUP = "metakit-console"
_LOW = (1 << 32) - 1  # a PID prints the low 32 bits of its id
_SORTS = ("mailbox", "name", "in", "out", "pid")
_MAX_LINE = 64 * 1024  # an interactive line longer than this ends the session

HELP = """\
ps [--sort mailbox|name|in|out|pid]   processes (by mailbox: the fullest first)
info <pid|name>                       one process or meta, with its handle_inspect
tree                                  supervisors and their children, with restarts
names                                 registered names
metas                                 meta-processes and their counters
events                                events, producers and subscribers
stats                                 the node: uptime, counts, memory, cluster
nodes                                 the nodes of the cluster (on a cluster node)
help                                  this
quit                                  end the session
Any command takes --json (for scripts) and, on a cluster, --node NAME."""

ACTIONS = """\
send <target> <json>                  send a message (a JSON value)
call <target> <json>                  call, and print the reply
exit <target> <reason>                send an exit signal
kill <target>                         kill"""


class _Refused(Exception):
    """A command that cannot run: the text says why (exit status 1)."""


class Console(Process):
    """The node console: an SSH server whose sessions run console commands.

    Args:
        host: the address to listen on (keep 127.0.0.1 unless you mean it).
        port: the port; 0 picks a free one (``call(console, "address")``).
        host_keys: as for :class:`~metakit.ssh.SSHServer` (None: generated).
        authorized_keys: who may log in: an authorized_keys file, its text,
            or a list of public keys. Required: the console takes keys only.
        allow_actions: allow ``send``, ``call``, ``exit`` and ``kill``.
        max_sessions: sessions open at once.
    """

    async def init(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        host_keys: Any = None,
        authorized_keys: Any,
        allow_actions: bool = False,
        max_sessions: int = 16,
    ) -> None:
        if authorized_keys is None:
            raise ValueError("the console needs authorized_keys: it takes key logins only")
        self.allow_actions = allow_actions
        self.server = SSHServer(
            host,
            port,
            host_keys=host_keys,
            authorized_keys=authorized_keys,
            line_editor=True,  # (Raw framing: output goes out as written, prompts too)
            max_sessions=max_sessions,
            idle_timeout=3600.0,
        )
        await self.spawn_meta(self.server)
        self.prompt = f"{self.node.name}> ".encode()
        self.interactive: dict[Alias, bytearray] = {}  # session -> its unfinished input line
        self.commands: dict[str, Callable[..., Any]] = {
            "ps": self.ps,
            "info": self.info,
            "tree": self.tree,
            "names": self.names,
            "metas": self.metas,
            "events": self.events,
            "stats": self.stats,
            "nodes": self.nodes,
            "help": self.help,
        }
        if allow_actions:
            self.commands |= {
                "send": self.act_send,
                "call": self.act_call,
                "exit": self.act_exit,
                "kill": self.act_kill,
            }
        if self.node.cluster is not None:
            await self.join_group(GROUP)

    def handle_inspect(self) -> dict[str, str]:
        return {
            "address": str(self.server.address),
            "host_key": str(self.server.fingerprint),
            "actions": "allowed" if self.allow_actions else "refused",
            "sessions": str(len(self.interactive)),
        }

    async def handle_call(self, sender: Caller, request: Any) -> Any:
        """``"address"``: the bound ``(host, port)``; ``("run", argv)`` (from the
        console of another node): ``(status, text)``."""
        match request:
            case "address":
                return self.server.address
            case ("run", list(argv)) if all(isinstance(a, str) for a in argv):
                return await self.run(argv)
        return None

    async def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case SSHConnect(conn, _, None, _, _):
                self.interactive[conn] = bytearray()
                banner = f"metakit console on {self.node.name}: help for commands\n"
                self.write(conn, banner.encode() + self.prompt)
            case SSHConnect(conn, _, str(command), _, _):
                status, text = await self.run_line(command)
                self.write(conn, text)
                self.send_exit(conn, "normal" if status == 0 else "failed")
            case SSHMessage(conn, bytes(data)) if conn in self.interactive:
                pending = self.interactive[conn]
                pending += data
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    if not await self.line(conn, line.decode(errors="replace").strip()):
                        return
                if len(pending) > _MAX_LINE:
                    self.write(conn, b"error: line too long\n")
                    self.send_exit(conn, "failed")
            case SSHDisconnect(conn, _):
                self.interactive.pop(conn, None)

    async def line(self, conn: Alias, command: str) -> bool:
        """Run one typed line; False once the session is ending (``quit``)."""
        if command == "quit":
            self.send_exit(conn, "normal")
            return False
        if command:
            _, text = await self.run_line(command)
            self.write(conn, text)
        self.write(conn, self.prompt)
        return True

    def write(self, conn: Alias, data: bytes) -> None:
        """Write ``data`` to a session (a session that is gone or full misses it)."""
        try:
            self.send(conn, SSHMessage(conn, data))
        except MetakitError:  # gone, or its client reads nothing: its Disconnect is coming
            pass

    # -- running a command ----------------------------------------------------------------

    async def run_line(self, line: str) -> tuple[int, bytes]:
        """Run one command line: its exit status and output."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            return 1, f"error: {exc}\n".encode()
        status, text = await self.run(argv)
        if text and not text.endswith("\n"):
            text += "\n"
        return status, text.encode()

    async def run(self, argv: list[str]) -> tuple[int, str]:
        """Run ``argv`` here, or on the node ``--node`` names: ``(status, text)``."""
        as_json = "--json" in argv
        argv = [a for a in argv if a != "--json"]
        try:
            node = _option(argv, "--node")
        except _Refused as exc:
            return 1, f"error: {exc}"
        if node is not None and node != self.node.name:
            return await self.forward(node, argv + (["--json"] if as_json else []))
        if not argv:
            return 0, ""
        command = self.commands.get(argv[0])
        if command is None:
            if argv[0] in ("send", "call", "exit", "kill"):
                return 1, f"refused: {argv[0]} is an action, and actions are off"
            return 1, f"unknown command: {argv[0]}; try help"
        try:
            result = command(*argv[1:])
            if inspect.isawaitable(result):
                result = await result
        except _Refused as exc:
            return 1, f"error: {exc}"
        except TypeError:
            return 1, f"error: wrong arguments for {argv[0]}; try help"
        except MetakitError as exc:
            return 1, f"error: {exc}"
        return 0, _render(result, as_json)

    async def forward(self, node: str, argv: list[str]) -> tuple[int, str]:
        """Run ``argv`` on the console of ``node`` (a cluster)."""
        if self.node.cluster is None:
            return 1, "error: this node is not in a cluster"
        consoles = [p for p in self.node.group_members(GROUP) if p.node == node]
        if not consoles:
            return 1, f"error: no console on node {node!r} (nodes: {', '.join(self.node.nodes())})"
        try:
            status, text = await self.call(consoles[0], ("run", argv), timeout=10.0)
        except MetakitError as exc:
            return 1, f"error: node {node!r}: {exc}"
        return int(status), str(text)

    def target(self, text: str) -> PID | Alias:
        """A live process or meta of this node: a name, or an id as ``ps`` prints it."""
        ident = text.removeprefix("<PID ").removeprefix("<Alias ").removesuffix(">")
        names = self.node.names()
        if ident in names:
            return names[ident]
        node, dot, low = ident.rpartition(".")
        if dot and low.isdigit():
            live: list[PID | Alias] = [*self.node.processes(), *self.node.metas()]
            for ident_ in live:
                if ident_.node == node and ident_.id & _LOW == int(low):
                    return ident_
        raise _Refused(f"no process or meta {text!r} here")

    # -- the commands ---------------------------------------------------------------------

    def ps(self, *args: str) -> Any:
        """``ps [--sort KEY]``: the processes, sorted by ``KEY`` (``mailbox``: fullest first)."""
        sort = _option(list(args), "--sort") or "pid"
        if sort not in _SORTS:
            raise _Refused(f"--sort takes {', '.join(_SORTS)}")
        rows = []
        for pid in self.node.processes():
            try:
                info = self.node.process_info(pid)
            except NoProcess:
                continue  # ended meanwhile
            rows.append(
                {
                    "pid": _id(pid),
                    "name": info.name or "",
                    "class": info.behavior,
                    "state": info.state,
                    "mailbox": info.mailbox,
                    "bound": info.mailbox_size,
                    "in": info.messages_in,
                    "out": info.messages_out,
                }
            )
        key: Callable[[dict[str, Any]], Any] = {
            "mailbox": lambda r: -r["mailbox"],
            "name": lambda r: r["name"],
            "in": lambda r: -r["in"],
            "out": lambda r: -r["out"],
            "pid": lambda r: 0,
        }[sort]
        return _Table(
            sorted(rows, key=key),
            ["pid", "name", "class", "state", "mailbox", "bound", "in", "out"],
        )

    def info(self, target: str) -> Any:
        """``info PID|NAME``: a process's or a meta's snapshot, ``handle_inspect`` included."""
        ident = self.target(target)
        info = (
            self.node.process_info(ident) if isinstance(ident, PID) else self.node.meta_info(ident)
        )
        return _plain(info)

    async def tree(self) -> Any:
        """``tree``: the supervisors and their children, with restarts."""
        sups = {}
        for pid in self.node.processes():
            try:
                info = self.node.process_info(pid)
            except NoProcess:
                continue
            if "strategy" in info.inspect:  # a Supervisor's inspect says how it restarts
                sups[pid] = info
        lines: list[str] = []
        roots = [p for p, i in sups.items() if i.parent not in sups]

        async def walk(pid: PID, depth: int) -> None:
            info = sups[pid]
            how = f"{info.inspect['strategy']}, {info.inspect.get('restarts', '0')} restarts"
            lines.append(f"{'  ' * depth}{_id(pid)} {info.behavior} ({how})")
            try:
                children = await self.call(pid, "which_children", timeout=2.0)
            except MetakitError:
                children = []
            for _, child in children:
                if child is None:
                    lines.append(f"{'  ' * (depth + 1)}(restarting)")
                elif child in sups:
                    await walk(child, depth + 1)
                else:
                    try:
                        c = self.node.process_info(child)
                        lines.append(
                            f"{'  ' * (depth + 1)}{_id(child)} {c.behavior} {c.name or ''}".rstrip()
                        )
                    except NoProcess:
                        lines.append(f"{'  ' * (depth + 1)}{_id(child)} (gone)")

        for root in roots:
            await walk(root, 0)
        return "\n".join(lines) if lines else "no supervisors"

    def names(self) -> Any:
        """``names``: the registered names and their processes."""
        return _Table(
            [{"name": n, "pid": _id(p)} for n, p in self.node.names().items()], ["name", "pid"]
        )

    def metas(self) -> Any:
        """``metas``: the meta-processes, their owners and their counters."""
        rows = []
        for alias in self.node.metas():
            try:
                info = self.node.meta_info(alias)
            except NoProcess:
                continue
            stats = info.statistics
            row = {
                "alias": _id(alias),
                "class": info.behavior,
                "parent": _id(info.parent),
                "state": info.state,
                "mailbox": info.mailbox,
                "in": info.messages_in,
                "out": info.messages_out,
            }
            if stats is not None and is_dataclass(stats):
                row["stats"] = " ".join(f"{k}={v}" for k, v in asdict(stats).items())  # type: ignore[arg-type]
            rows.append(row)
        return _Table(rows, ["alias", "class", "parent", "state", "mailbox", "in", "out", "stats"])

    def events(self) -> Any:
        """``events``: the events, their producers and subscribers."""
        rows = [
            {
                "event": e.name,
                "producer": _id(e.producer),
                "subscribers": e.subscribers,
                "nodes": ",".join(e.nodes),
                "cluster": e.cluster,
            }
            for e in self.node.events()
        ]
        return _Table(rows, ["event", "producer", "subscribers", "nodes", "cluster"])

    def stats(self) -> Any:
        """``stats``: the node: uptime, counts, memory, and the cluster's figures."""
        node = self.node
        found: dict[str, Any] = {
            "node": node.name,
            "uptime_s": round(node.uptime, 1),
            "processes": len(node.processes()),
            "metas": len(node.metas()),
            "rss_kib": rss_kib(),
            "fds": open_fds(),
        }
        if node.cluster is not None:
            stats = node.cluster.statistics()  # type: ignore[attr-defined]
            found["cluster"] = asdict(stats) if is_dataclass(stats) else repr(stats)  # type: ignore[arg-type]
        return found

    def nodes(self) -> Any:
        """``nodes``: the nodes of the cluster (this one alone otherwise)."""
        return self.node.nodes() if self.node.cluster is not None else [self.node.name]

    def help(self) -> Any:
        """``help``: the commands (and the actions, when they are allowed)."""
        return HELP + ("\n" + ACTIONS if self.allow_actions else "\n(actions are off)")

    def act_send(self, target: str, value: str) -> Any:
        """``send TARGET JSON``: send the JSON value as a message."""
        self.node.send(self.target(target), _json(value))
        return "sent"

    async def act_call(self, target: str, value: str) -> Any:
        """``call TARGET JSON``: call with the JSON value; its answer."""
        return await self.call(self.target(target), _json(value), timeout=5.0)

    def act_exit(self, target: str, reason: str) -> Any:
        """``exit TARGET REASON``: send an exit signal."""
        self.node.send_exit(self.target(target), reason)
        return "exit sent"

    def act_kill(self, target: str) -> Any:
        """``kill TARGET``: kill it (untrappable)."""
        self.node.kill(self.target(target))
        return "killed"


class _Table:
    """Rows to print as aligned columns, or as JSON."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        self.rows = rows
        self.columns = [c for c in columns if any(c in r for r in rows)] or columns

    def text(self) -> str:
        cells = [[str(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [
            max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(self.columns)
        ]
        lines = ["  ".join(c.upper().ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        return "\n".join(lines)


def _render(result: Any, as_json: bool) -> str:
    if isinstance(result, _Table):
        return json.dumps(result.rows, default=repr) if as_json else result.text()
    if as_json:
        return json.dumps(result, default=repr)
    if isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        return "\n".join(f"{k.ljust(width)}  {_flat(v)}" for k, v in result.items())
    if isinstance(result, list):
        return "\n".join(str(v) for v in result)
    return str(result) if isinstance(result, str) else json.dumps(result, default=repr)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, PID | Alias):
        return _id(value)
    if isinstance(value, tuple | list):
        return ", ".join(_flat(v) for v in value) or "-"
    return str(value)


def _plain(info: Any) -> dict[str, Any]:
    """A snapshot as a dict of plain values (PIDs as ``ps`` prints them)."""
    out: dict[str, Any] = {}
    for field in info.__dataclass_fields__:
        value = getattr(info, field)
        if isinstance(value, PID | Alias):
            value = _id(value)
        elif isinstance(value, tuple):
            value = [_id(v) if isinstance(v, PID | Alias) else repr(v) for v in value]
        elif field == "inspect":
            value = dict(value)
        elif field == "statistics" and value is not None and is_dataclass(value):
            value = {k: str(v) for k, v in asdict(value).items()}  # type: ignore[arg-type]
        out[field] = value
    return out


def _id(ident: PID | Alias) -> str:
    return f"{ident.node}.{ident.id & _LOW}"


def _option(argv: list[str], flag: str) -> str | None:
    """Take ``flag VALUE`` out of ``argv``; the value, or None."""
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise _Refused(f"{flag} needs a value")
        value = argv[i + 1]
        del argv[i : i + 2]
        return value
    return None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _Refused(f"not JSON: {exc}") from None
