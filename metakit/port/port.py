"""Port: an external program as a meta-process (Erlang's ports), a thin adapter
on :class:`metakit.connection.StreamConnection` (which owns the lifecycle and
the back-pressure; read its theory of operation first).

The meta is the program's ``asyncio.SubprocessProtocol`` itself (no Task per
port): stdout goes through the framer to the worker as ``PortMessage``\\ s,
the worker's ``PortMessage``\\ s go to stdin, stderr lines arrive as
``PortStderr``, and ``PortExit`` comes once, last, when the program has
exited and its stdout is read to the end.

What is a port's own:

* the program runs in a process group of its own (``start_new_session``),
  so a shell pipeline's children are stopped with it;
* reading pauses at the worker's watermark through the stdout pipe, and
  writes are held while the stdin pipe is full, as a socket's;
* ending it — ``send_exit(port, "normal")``, the worker or the node ending
  — closes stdin after the writes queued before, waits ``kill_grace``
  seconds for the program to exit, then sends SIGTERM to the group, and
  SIGKILL after another ``kill_grace``; ``"kill"`` sends SIGKILL at once.
  The port itself ends once the program has exited, so ``PortExit`` has its
  real ``returncode``;
* if the node's OS process dies without stopping its ports (SIGKILL), the
  node's watchdog process (:mod:`._watchdog`) kills their groups;
* a program that exits while others in its group still hold its stdout:
  the port waits ``kill_grace`` for the end of stdout, then stops the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from ..connection import ConnState, StreamConnection
from ..errors import MetakitError
from ..framing import Framer, Line
from ..mailbox import connection_read
from ._watchdog import Watchdog
from .messages import PortExit, PortMessage, PortStart, PortStderr

__all__ = ["Port"]

_STDERR = ("lines", "stdout", "ignore")
_MAX_STDERR_LINE = 64 * 1024  # a longer stderr line is cut and delivered in pieces


class Port(StreamConnection, asyncio.SubprocessProtocol):
    """Run ``argv`` as a meta-process; the parent is its worker.

    ::

        port = await self.spawn_meta(Port(["tail", "-F", "app.log"]))
        # PortStart(port, os_pid), a PortMessage per line, ... PortExit(port, code, reason)
        self.send(port, PortMessage(port, b"a line for its stdin"))

    Args:
        argv: the program and its arguments (no shell: pass ``["sh", "-c",
            ...]`` for one).
        framing: the framer for stdout and stdin (cloned); default ``Line()``.
        stderr: ``"lines"`` (each line a ``PortStderr``), ``"stdout"``
            (merged into stdout, as ``2>&1``) or ``"ignore"``.
        env: the program's whole environment (None: this process's).
        cwd: the directory to run it in.
        kill_grace: seconds from closing stdin to SIGTERM, and from SIGTERM
            to SIGKILL.
        high_watermark: pause reading stdout when the worker's mailbox holds
            more messages than this.
        low_watermark: resume when it is down to about this many.

    Error handling:
        A missing executable or a bad ``cwd`` raises (``FileNotFoundError``,
        ``PermissionError``...) at ``spawn_meta``. A stderr line the worker's
        full mailbox refuses is dropped and counted (``handle_inspect``).
    """

    __slots__ = (
        "_argv",
        "_cwd",
        "_early",
        "_env",
        "_err",
        "_exit",
        "_exited",
        "_grace",
        "_pid",
        "_returncode",
        "_stderr",
        "_stderr_dropped",
        "_stdout_open",
        "_stop_reason",
        "_stopping",
        "_transport",
        "_watchdog",
    )

    message_type = PortMessage

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        framing: Framer[Any] | None = None,
        stderr: str = "lines",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        kill_grace: float = 5.0,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        if not argv:
            raise ValueError("argv names the program: it cannot be empty")
        if stderr not in _STDERR:
            raise ValueError(f"stderr must be one of {_STDERR}, not {stderr!r}")
        if not kill_grace > 0:
            raise ValueError(f"kill_grace must be positive, not {kill_grace!r}")
        super().__init__(
            framing or Line(), high_watermark=high_watermark, low_watermark=low_watermark
        )
        self._argv = [os.fspath(a) for a in argv]
        self._stderr = stderr
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._grace = kill_grace
        self._transport: Any = None
        self._pid: int | None = None
        self._returncode: int | None = None
        self._exited = False
        self._stdout_open = True
        self._early: list[tuple[int, bytes]] | None = []  # read before the worker heard of us
        self._err = bytearray()
        self._stderr_dropped = 0
        self._stopping: asyncio.Task[None] | None = None
        self._stop_reason: Any = None
        self._exit: asyncio.Future[None] | None = None  # done: exited, and stdout at its end
        self._watchdog: Watchdog | None = None

    # -- starting -----------------------------------------------------------------------

    async def init(self) -> None:
        """Start the program (its errors raise here, at ``spawn_meta``)."""
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        pipe = asyncio.subprocess.PIPE
        err = {
            "lines": pipe,
            "stdout": asyncio.subprocess.STDOUT,
            "ignore": asyncio.subprocess.DEVNULL,
        }
        starting = loop.create_task(
            loop.subprocess_exec(
                lambda: self,
                *self._argv,
                stdin=pipe,
                stdout=pipe,
                stderr=err[self._stderr],
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,  # a group of its own: stopped as one
            )
        )
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Cancelled while starting: the program may be running by now. Stop
            # it (the whole group) before giving up, so nothing is left behind.
            with contextlib.suppress(BaseException):
                await starting
            if self._transport is not None:
                self._signal_group(signal.SIGKILL)
                self._transport.close()
            raise
        self._pid = self._transport.get_pid()
        self._watchdog = Watchdog.get(self._grace)
        self._watchdog.watch(self._pid)
        self.open(None, PortStart(self.id, self._pid))
        early, self._early = self._early, None
        for fd, data in early or ():
            self.pipe_data_received(fd, data)
        if self._exited:
            # It has exited already (uvloop tells at once): end once running,
            # right after this init returns.
            asyncio.get_running_loop().call_soon(self._exited_early)

    # -- the protocol: asyncio calls these (pause_writing/resume_writing, for
    # stdin, are Connection's) ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The program has started."""
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        """Output: stdout frames go to the worker, stderr lines as ``PortStderr``."""
        if self._early is not None:
            self._early.append((fd, data))
        elif fd == 1:
            connection_read(self, data)
        else:
            self._stderr_received(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        """A pipe closed: stdout's end is the end of the output."""
        if fd == 1:
            self._stdout_open = False
            self._mark_done()
            self._check_done()

    def process_exited(self) -> None:
        """The program has exited; the port ends once its stdout is read too."""
        self._exited = True
        self._returncode = self._transport.get_returncode()
        self._mark_done()
        if self._stdout_open and self._early is None:
            self._stop()  # its group still holds stdout: give it kill_grace, then stop it
        self._check_done()

    def _exited_early(self) -> None:
        if self._stdout_open:
            self._stop()
        self._check_done()

    def _stop(self) -> None:
        """Start the stop sequence (:meth:`_stop_group`), once."""
        if self._stopping is None:
            self._stopping = self.create_task(self._stop_group(), name=f"metakit port {self.id!r}")

    def _mark_done(self) -> None:
        # The program has exited and its output is read to the end.
        done = self._exit
        if self._exited and not self._stdout_open and done is not None and not done.done():
            done.set_result(None)

    def _check_done(self) -> None:
        if self._exited and not self._stdout_open and self._early is None:
            self._release()
            self._transport.close()  # (lost() below does not: the transport is done)
            if self.state < ConnState.LINGERING:
                self.lost(self._stop_reason if self._stop_reason is not None else "exited")

    def _stderr_received(self, data: bytes) -> None:
        err = self._err
        err += data
        while True:
            end = err.find(b"\n")
            if end < 0:
                if len(err) < _MAX_STDERR_LINE:
                    return
                end = _MAX_STDERR_LINE
                line, rest = bytes(err[:end]), err[end:]
            else:
                line, rest = bytes(err[:end]), err[end + 1 :]
            err[:] = rest
            worker = self.worker
            try:
                if worker is None:
                    raise MetakitError("no worker")
                self.send(worker, PortStderr(self.id, line))
            except MetakitError:  # the worker is far behind (or gone): counted, not queued
                self._stderr_dropped += 1

    # -- ending -------------------------------------------------------------------------

    def finish(self, reason: Any) -> None:
        """End the port: stop the program first (stdin closed after the queued
        writes, then SIGTERM and SIGKILL after ``kill_grace`` each); the port
        ends, with ``PortExit``, once it has exited."""
        if self._exited or self._transport is None or self._stop_reason is not None:
            super().finish(reason)
            return
        self._stop_reason = reason
        self.writable = False  # later writes are dropped and counted
        self._stop()

    async def _stop_group(self) -> None:
        """Close stdin; SIGTERM the group after ``kill_grace``, SIGKILL after another."""
        with contextlib.suppress(Exception):
            stdin = self._transport.get_pipe_transport(0)
            if stdin is not None:
                stdin.close()  # after what it holds
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                await asyncio.wait_for(self._ended(), self._grace)
                return
            except TimeoutError:
                self._signal_group(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended(), self._grace)

    async def _ended(self) -> None:
        """Until the program has exited and its stdout has ended (a process of
        its group may hold stdout past its exit)."""
        assert self._exit is not None
        await asyncio.shield(self._exit)

    def _signal_group(self, sig: signal.Signals) -> None:
        pid = self._pid if self._pid is not None else self._transport.get_pid()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _release(self) -> None:
        if self._watchdog is not None and self._pid is not None:
            # The leader is gone; kill what may remain of its group first.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)
            self._watchdog.release(self._pid)
            self._watchdog = None

    # -- the Connection hooks -------------------------------------------------------------

    def set_reading(self, on: bool) -> None:
        """Resume or pause reading stdout."""
        stdout = self._transport.get_pipe_transport(1) if self._transport else None
        if stdout is not None:
            stdout.resume_reading() if on else stdout.pause_reading()

    def close_transport(self, reason: Any, abort: bool) -> None:
        """The port is ending: if the program still runs, kill its group now
        (``"kill"``) or stop it in the background; close the transport once
        it has exited."""
        if self._transport is None:
            return
        if self._exited:
            self._release()
            self._transport.close()
            return
        if abort:
            self._signal_group(signal.SIGKILL)
        else:
            self._stop()
        self.create_task(self._close_when_exited(), name=f"metakit port close {self.id!r}")

    async def _close_when_exited(self) -> None:
        try:
            if self._stopping is not None:
                await self._stopping
            assert self._exit is not None
            await asyncio.wait_for(asyncio.shield(self._exit), self._grace)
        except Exception:
            self._signal_group(signal.SIGKILL)
        finally:
            self._release()
            self._transport.close()

    def disconnect_message(self, reason: Any) -> PortExit:
        """``PortExit(port, returncode, reason)`` (SIGKILL's ``-9`` when killed
        before it could be reaped)."""
        code = self._returncode
        if code is None and reason == "kill":
            code = -signal.SIGKILL
        return PortExit(self.id, code, reason)

    def write(self, data: Any) -> int:
        """Write one frame (encoded by the framer) to the program's stdin."""
        if not self.raw_framing:
            data = self.framer.encode(data)
        stdin = self._transport.get_pipe_transport(0)
        if stdin is None or stdin.is_closing():
            return 0
        stdin.write(data)
        return len(data)

    def handle_inspect(self) -> dict[str, str]:
        """Connection's fields, the program, its pid and exit status, stderr drops."""
        info = super().handle_inspect()
        info["argv"] = " ".join(self._argv)
        info["os_pid"] = str(self._pid)
        info["returncode"] = str(self._returncode)
        info["stderr_dropped"] = str(self._stderr_dropped)
        return info
