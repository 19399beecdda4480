"""The observer's agent: the process that samples its node and acts on it.

Every :class:`~metakit.observer.Observer` spawns one (linked), and on a
cluster node the agent joins the group ``metakit-observer``: an observer
showing another node calls *that* node's agent, so the sampling runs on the
node shown (DESIGN.md §11) and only the rendered rows cross the wire. The
agent never calls anyone, so two observers showing each other's node cannot
wait on each other; the page side (sockets, timers) stays in the Observer.

Requests (``call``):

* ``("sample", [view, ...])`` — one rendered sample per view (a dict; ``{"error":
  ...}`` for a view it cannot read);
* ``("act", {"action", "target", "value", "reason"})`` — ``(status, text)``:
  200 done, 403 actions are off on this node, 400 a bad request, 404 no such
  process here. Values are JSON, already decoded: nothing is evaluated.
"""

from __future__ import annotations

from typing import Any

from ..errors import MetakitError
from ..ids import PID
from ..messages import Caller
from ..process import Process
from ._sample import Sampler
from ._view import View, render

__all__ = ["GROUP", "Agent"]

GROUP = "metakit-observer"
"""The process group of the agents of a cluster's observers."""

_MAX_VIEWS = 64  # views served by one sample request
_MAX_REASON = 200


class Agent(Process):
    """Samples this node for observers (this node's and other nodes')."""

    async def init(self, *, allow_actions: bool, max_rows: int, max_age: float) -> None:
        """Join the group, on a cluster (the Observer passes its own settings)."""
        self.allow_actions = allow_actions
        self.max_rows = max_rows
        self.sampler = Sampler(self.node, max_age=max_age)
        if self.node.cluster is not None:
            await self.join_group(GROUP)

    def handle_inspect(self) -> dict[str, str]:
        """Samples taken, what the last one cost, whether actions are allowed."""
        return {
            "samples": str(self.sampler.samples),
            "sample_ms": f"{self.sampler.cost * 1000:.2f}",
            "actions": "allowed" if self.allow_actions else "refused",
        }

    async def handle_call(self, sender: Caller, request: Any) -> Any:
        """``("sample", views)``: a list of samples; ``("act", request)``: ``(status, text)``."""
        match request:
            case ("sample", list(views) | tuple(views)):
                return await self.sample(list(views)[:_MAX_VIEWS])
            case ("act", dict(body)):
                return self.act(body)
        return None

    async def sample(self, views: list[Any]) -> list[dict[str, Any]]:
        """Render ``views`` of one snapshot of this node."""
        snapshot = await self.sampler.take()
        out = []
        for data in views:
            try:
                view = View.parse(data, node=self.node.name, max_rows=self.max_rows)
            except ValueError as exc:
                out.append({"error": str(exc)})
                continue
            sample = render(self.node, snapshot, view)
            sample["actions"] = self.allow_actions
            out.append(sample)
        return out

    def act(self, body: dict[str, Any]) -> tuple[int, str]:
        """Send, exit or kill one process of this node, if actions are allowed here."""
        if not self.allow_actions:
            return 403, f"actions are off on {self.node.name}"
        action = body.get("action")
        target = self.target(body.get("target"))
        if target is None:
            return 404, f"no process {body.get('target')!r} on {self.node.name}"
        try:
            if action == "send":
                if "value" not in body:
                    return 400, "send needs a value"
                self.node.send(target, body["value"])
                return 200, "sent"
            if action == "exit":
                reason = body.get("reason", "normal")
                if not isinstance(reason, str) or not reason or len(reason) > _MAX_REASON:
                    return 400, f"an exit reason is a string of 1 to {_MAX_REASON} characters"
                self.node.send_exit(target, reason)
                return 200, "exit sent"
            if action == "kill":
                self.node.kill(target)
                return 200, "killed"
        except MetakitError as exc:  # gone meanwhile, or a full mailbox
            return 409, str(exc)
        return 400, "action is send, exit or kill"

    def target(self, text: Any) -> PID | None:
        """A live process of this node: its id (digits) or a registered name."""
        if not isinstance(text, str) or not text or len(text) > 256:
            return None
        if text.isdigit() and len(text) <= 20:
            pid = PID(self.node.name, int(text))
        else:
            found = self.node.names().get(text)
            if found is None:
                return None
            pid = found
        try:
            self.node.process_info(pid)
        except MetakitError:
            return None
        return pid
