"""The observer over real sockets with aiohttp's client: its URL, the page and
its files, the stream's samples and views, the token, Host and Origin
checks, the actions, and silence while nobody watches (DESIGN.md §11)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import orjson
import pytest
from observing import (
    INTERVAL,
    Idle,
    Mirror,
    Stuck,
    agent,
    base,
    delta_rows,
    inspect,
    next_frame,
    next_sample,
    observe,
    rows_by_name,
    stays,
    stream_url,
)

from metakit import ChildSpec, Node, Supervisor
from metakit.observer._delta import Sent
from metakit.testing import TIMEOUT, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_url_page_and_files(node: Node) -> None:
    observer, url = await observe(node)
    assert isinstance(url, str)
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200
            assert page.content_type == "text/html"
            assert "metakit observer" in await page.text()
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            assert page.headers["X-Frame-Options"] == "DENY"
        for name, kind in (("observer.js", "text/javascript"), ("observer.css", "text/css")):
            async with http.get(url + name) as file:
                assert file.status == 200
                assert file.content_type == kind
        async with http.get(url + "nothing-here") as missing:
            assert missing.status == 404
    assert inspect(node, observer)["ticking"] == "no"


async def test_the_stream_samples_the_node(node: Node) -> None:
    sup = await node.spawn(
        Supervisor, [ChildSpec(Idle, name="child-1"), ChildSpec(Idle, name="child-2")], name="sup"
    )
    gate = asyncio.Event()
    stuck = await node.spawn(Stuck, gate, name="stuck", mailbox_size=1000)
    await node.spawn(Idle, name="greeter")
    _, url = await observe(node)
    try:
        for n in range(300):
            node.send(stuck, n)
        async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(url)) as ws:
            hello = await ws.receive_json(timeout=TIMEOUT)
            assert hello == {
                "hello": {
                    "node": node.name,
                    "interval": INTERVAL,
                    "actions": False,
                    "max_rows": 1000,
                }
            }
            sample = await next_sample(ws)
            assert sample["nodes"] == [node.name] == sample["observed"]
            stats = sample["stats"]
            assert stats["name"] == node.name
            assert stats["loop"] in ("asyncio", "uvloop")
            assert stats["processes"] == len(node.processes())
            assert stats["rss_kib"] > 0
            assert stats["fds"] > 0
            assert {"uptime", "lag_ms", "messages_s", "metas", "sample_ms"} <= set(stats)
            rows = rows_by_name(sample)
            # By default the fullest mailbox first: 299 wait behind the one it is stuck on.
            first = sample["processes"]["rows"][0]
            assert first[2] == "stuck"
            assert first[5:7] == [299, 1000]
            assert rows["greeter"][3:5] == ["Idle", "idle"]
            (tree,) = sample["tree"]
            assert (tree["name"], tree["strategy"], tree["restarts"]) == ("sup", "one_for_one", 0)
            assert [c["name"] for c in tree["children"]] == ["child-1", "child-2"]
            assert tree["id"] == str(sup.id)
            behaviors = {row[2] for row in sample["metas"]["rows"]}
            assert {"WebServer", "WebSocketHandler", "WebHandler", "WSConnection"} <= behaviors

            # A view: sorted by name, filtered, capped, with a process's details.
            greeter = rows["greeter"][0]
            view = {"sort": "name", "desc": False, "filter": "child", "limit": 1}
            await ws.send_json({"view": {**view, "selected": greeter}})
            sample = await next_sample(ws, lambda s: s["view"]["filter"] == "child")
            assert [r[2] for r in sample["processes"]["rows"]] == ["child-1"]
            assert sample["processes"]["matched"] == 2
            details = sample["details"]
            assert details["name"] == "greeter"
            assert details["inspect"] == {"mood": "idle"}
            assert details["behavior"] == "Idle"
            assert details["mailbox_size"] == 0

            # A process spawned now is in the next samples.
            await ws.send_json({"view": {"sort": "pid", "desc": True}})
            await node.spawn(Idle, name="late-comer")
            sample = await next_sample(ws, lambda s: "late-comer" in rows_by_name(s))
            assert sample["processes"]["rows"][0][2] == "late-comer"  # the newest first

            await ws.send_json({"view": {"sort": "bogus"}})
            error = await next_frame(ws, lambda m: "error" in m)  # a sample may come first
            assert error["error"].startswith("bad view: sort is one of")
    finally:
        gate.set()


async def test_rates_are_deltas_not_totals(node: Node) -> None:
    busy = await node.spawn(Idle, name="busy")
    _, url = await observe(node)
    async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(url)) as ws:
        await ws.send_json({"view": {"filter": "busy", "selected": str(busy.id)}})
        await next_sample(ws, lambda s: s["view"]["filter"] == "busy")
        for n in range(100):
            node.send(busy, n)
        burst = await next_sample(ws, lambda s: rows_by_name(s)["busy"][7] > 0)
        assert burst["stats"]["messages_s"] >= rows_by_name(burst)["busy"][7]
        # The next samples: no more messages, so 0 a second; the total stays in the details.
        quiet = await next_sample(ws, lambda s: rows_by_name(s)["busy"][7] == 0)
        assert quiet["details"]["messages_in"] == 100


async def test_deltas_on_the_wire(node: Node) -> None:
    for _ in range(100):
        await node.spawn(Idle)
    gate = asyncio.Event()
    stuck = await node.spawn(Stuck, gate, name="stuck")
    leaver = await node.spawn(Idle, name="leaver")
    _, url = await observe(node)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(url)) as ws:
            assert "hello" in await next_frame(ws)
            first = await next_frame(ws)
            assert set(first) == {"sample"}  # whole: every row of the view
            rows = first["sample"]["processes"]["rows"]
            assert len(rows) == len(node.processes()) > 100  # (under the 200 rows' cap)

            # Idle: the next frame has the figures and the few rows that changed
            # (the observer's and its agent's rates), no order, a fraction of the bytes.
            idle = await next_frame(ws)
            assert set(idle) == {"delta"}  # (the mirror checks no unchanged row came)
            assert {"stats"} <= set(idle["delta"]) <= {"stats", "processes", "metas"}
            assert len(delta_rows(idle)) <= 3
            assert delta_rows(idle, "order") == delta_rows(idle, "gone") == []
            assert len(orjson.dumps(idle)) * 5 < len(orjson.dumps(first))
            behaviors = {r[3] for r in delta_rows(idle)}
            assert behaviors <= {"Observer", "Agent"}, behaviors

            # A mailbox that fills: a changed row, and a new order (the fullest first).
            key = str(stuck.id)
            for n in range(10):
                node.send(stuck, n)
            frame = await next_frame(ws, lambda m: key in [r[0] for r in delta_rows(m)])
            (row,) = [r for r in delta_rows(frame) if r[0] == key]
            assert row[5] in (9, 10)  # (one in its handler, once it has run)
            assert delta_rows(frame, "order")[0] == key

            # A process that ends: its key is gone, and the total follows.
            gone = node.wait_exit(leaver, TIMEOUT)
            node.kill(leaver)
            await gone
            frame = await next_frame(ws, lambda m: str(leaver.id) in delta_rows(m, "gone"))
            assert frame["delta"]["processes"]["total"] == len(node.processes())

            # A process spawned now: a changed row, placed by a new order (the
            # newest of the empty mailboxes: the last).
            late = await node.spawn(Idle, name="late")
            frame = await next_frame(ws, lambda m: "late" in [r[2] for r in delta_rows(m)])
            assert delta_rows(frame, "order")[-1] == str(late.id)
            assert delta_rows(frame, "order")[0] == key

            # What the deltas added up to is what a whole frame says: a view
            # (the same one, sent again) gets a whole frame.
            mirrored = await next_sample(ws)
            await ws.send_json({"view": {}})
            whole = await next_frame(ws, lambda m: "sample" in m)
            again = whole["sample"]["processes"]["rows"]
            assert [r[0] for r in again] == [r[0] for r in mirrored["processes"]["rows"]]
            quiet = [r for r in again if r[3] not in ("Observer", "Agent")]
            assert quiet == [
                r for r in mirrored["processes"]["rows"] if r[3] not in ("Observer", "Agent")
            ]
            assert set(await next_frame(ws)) == {"delta"}  # and deltas again
    finally:
        gate.set()


async def test_a_new_view_or_page_gets_a_whole_frame(node: Node) -> None:
    await node.spawn(Idle, name="named")
    _, url = await observe(node)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # a page, then another (a reconnect): whole first, then deltas
            async with http.ws_connect(stream_url(url)) as ws:
                assert "sample" in await next_frame(ws, lambda m: "hello" not in m)
                assert "delta" in await next_frame(ws)
                for view in ({"sort": "name"}, {"filter": "named"}, {"limit": 5}):
                    await ws.send_json({"view": view})
                    frame = await next_frame(ws, lambda m, v=view: _shows(m, v))
                    assert "sample" in frame
                    assert "delta" in await next_frame(ws)


def _shows(frame: dict[str, Any], view: dict[str, Any]) -> bool:
    """A frame for ``view`` (a delta leaves the view out: it has not changed)."""
    shown = frame.get("sample", frame.get("delta", {})).get("view", {})
    return all(shown.get(k) == v for k, v in view.items())


def test_sent_frames_add_up() -> None:
    """:class:`Sent` against the page's mirror over random samples: every
    frame, added to what the page has, is the sample; an error or rows the
    page could not key make a whole frame."""
    rng = random.Random(17)
    sent, mirror = Sent(), Mirror()

    def sample(keys: list[str]) -> dict[str, Any]:
        rows = [[k, rng.choice("ab"), rng.randrange(3)] for k in keys]
        return {
            "stats": {"uptime": rng.random()},
            "processes": {"total": len(keys) + 5, "matched": len(keys), "rows": rows},
            "metas": {"total": 2, "rows": [["m1", rng.randrange(2)], ["m2", 0]]},
            "events": [["tick", rng.randrange(2)]] if rng.random() < 0.5 else [],
            "tree": [{"id": "1", "restarts": rng.randrange(2)}],
            "details": None,
        }

    keys = [str(n) for n in range(30)]
    kinds = []
    for _ in range(300):
        if rng.random() < 0.3:
            rng.shuffle(keys)
        shown = [k for k in keys if rng.random() < 0.9]
        if rng.random() < 0.2:
            shown.append(str(rng.randrange(100, 200)))
        expected = sample(shown)
        frame = sent.frame(expected)
        kinds.append(next(iter(frame)))
        assert mirror.apply(orjson.loads(orjson.dumps(frame))) == expected
    assert kinds[0] == "sample"
    assert set(kinds[1:]) == {"delta"}
    assert sent.frame({"error": "no observer"}) == {"sample": {"error": "no observer"}}
    assert "sample" in sent.frame(sample(keys))  # whole again after an error
    twice = sample(["1", "1"])
    assert sent.frame(twice) == {"sample": twice}  # a key twice: not as a delta
    assert "sample" in sent.frame(sample(keys))


async def test_silent_while_no_page_is_open(node: Node) -> None:
    observer, url = await observe(node)
    sampler = agent(node, observer)
    seen = node.process_info(observer).messages_in
    # Nobody watches: no sample, no tick, no message to the observer.
    await stays(
        lambda: (
            inspect(node, observer)["ticking"] == "no"
            and inspect(node, sampler)["samples"] == "0"
            and node.process_info(observer).messages_in == seen
        ),
        3 * INTERVAL,
        "the observer worked with no page open",
    )
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(stream_url(url)) as ws:
            await next_sample(ws)
            await next_sample(ws)
            assert inspect(node, observer)["pages"] == "1"
        closed = time.monotonic()
        await wait_until(
            lambda: (
                inspect(node, observer)["pages"] == "0"
                and inspect(node, observer)["ticking"] == "no"
            ),
            2.0,
            "still ticking 2 s after the last page closed",
        )
        assert time.monotonic() - closed < 2.0
    samples = inspect(node, sampler)["samples"]
    ticks = inspect(node, observer)["ticks"]
    await stays(
        lambda: (
            inspect(node, sampler)["samples"] == samples
            and inspect(node, observer)["ticks"] == ticks
        ),
        3 * INTERVAL,
        "sampled after the last page closed",
    )


async def test_the_token_guards_every_request(node: Node) -> None:
    _, url = await observe(node, token="s3cret/+")
    page = base(url)
    assert url == page + "?token=s3cret%2F%2B"
    jar = aiohttp.CookieJar(unsafe=True)  # (the client's jar takes no cookie from an IP otherwise)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        for path in ("", "observer.js", "observer.css", "stream", "api/action", "nowhere"):
            async with http.get(page + path) as response:
                assert response.status == 401, path
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(page + path + "?token=wrong") as response:
                assert response.status == 401, path
        async with http.post(page + "api/action", json={"action": "kill"}) as response:
            assert response.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(stream_url(url, "s3cret"))  # unquoted: another token
        assert refused.value.status == 401
        async with http.get(page, headers={"Authorization": "Bearer s3cret/+"}) as response:
            assert response.status == 200
        async with http.get(url) as response:  # the page sets the cookie its files use
            assert response.status == 200
            assert response.cookies  # HttpOnly, SameSite=Strict
        async with http.get(page + "observer.js") as response:
            assert response.status == 200
        async with http.ws_connect(page + "stream") as ws:
            assert "hello" in await ws.receive_json(timeout=TIMEOUT)
        async with http.get(page + "observer.js?token=wrong") as response:
            assert response.status == 401  # a wrong token is wrong, whatever the cookie


async def test_host_and_origin_are_checked(node: Node) -> None:
    _, url = await observe(node)
    origin = base(url).rstrip("/")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(stream_url(url), origin="http://evil.example")
        assert refused.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(stream_url(url), headers={"Sec-Fetch-Site": "same-site"})
        assert refused.value.status == 403  # another port of the same host is another origin
        async with http.ws_connect(stream_url(url), origin=origin) as ws:
            assert "hello" in await ws.receive_json(timeout=TIMEOUT)
        # DNS rebinding: a name that points at 127.0.0.1 is still another host.
        async with http.get(url, headers={"Host": "evil.example:80"}) as response:
            assert response.status == 403
        async with http.get(url.replace("127.0.0.1", "localhost")) as response:
            assert response.status == 200


async def test_actions_are_refused_by_default(node: Node, probe: Any) -> None:
    target = await probe("target")
    _, url = await observe(node)
    async with aiohttp.ClientSession() as http:
        for action in ({"action": "kill", "target": "target"}, {"action": "send", "value": 1}):
            async with http.post(base(url) + "api/action", json=action) as response:
                assert response.status == 403
        async with http.ws_connect(stream_url(url)) as ws:
            assert (await ws.receive_json(timeout=TIMEOUT))["hello"]["actions"] is False
            assert (await next_sample(ws))["actions"] is False
    assert target.pid in node.processes()
    assert target.pending() == []


async def test_actions_when_allowed(node: Node, probe: Any) -> None:
    target = await probe("target")
    victim = await node.spawn(Idle, name="victim")
    _, url = await observe(node, allow_actions=True)
    api = base(url) + "api/action"
    origin = base(url).rstrip("/")

    async def act(body: Any, **options: Any) -> tuple[int, Any]:
        options.setdefault("data", orjson.dumps(body))
        options.setdefault("headers", {"Content-Type": "application/json"})
        async with http.post(api, **options) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()  # the guard's refusals

    async with aiohttp.ClientSession() as http:
        sent = {"action": "send", "target": str(target.pid.id), "value": {"say": ["hi", 1]}}
        assert await act(sent) == (200, {"ok": True, "message": "sent"})
        assert await target.receive() == {"say": ["hi", 1]}  # a JSON value, never evaluated
        status, _ = await act({"action": "send", "target": "target", "value": "__import__('os')"})
        assert status == 200
        assert await target.receive() == "__import__('os')"
        assert (await act({"action": "send", "target": "target"}))[0] == 400
        assert (await act({"action": "frobnicate", "target": "target"}))[0] == 400
        assert (await act({"action": "kill", "target": "nobody"}))[0] == 404
        assert (await act(sent, data=b"{not json"))[0] == 400
        assert (await act(sent, headers={"Content-Type": "text/plain"}))[0] == 415
        evil = {"Content-Type": "application/json", "Origin": "http://evil.example"}
        assert (await act(sent, headers=evil))[0] == 403
        same = {"Content-Type": "application/json", "Origin": origin}
        exited = node.wait_exit(victim, TIMEOUT)
        status, _ = await act({"action": "exit", "target": "victim", "reason": "bye"}, headers=same)
        assert status == 200
        assert await exited == "bye"
        gone = node.wait_exit(target.pid, TIMEOUT)
        assert (await act({"action": "kill", "target": str(target.pid.id)}))[0] == 200
        assert await gone == "kill"


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_ten_thousand_processes(node: Node) -> None:
    for n in range(10_000):
        await node.spawn(Idle, name=f"idle-{n}" if n % 2 else None)
    observer, url = await observe(node)
    async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(url)) as ws:
        await next_sample(ws)
        sample = await next_sample(ws)  # the second: rates over a whole interval
        await ws.send_json({"view": {"sort": "name", "desc": True, "filter": "idle-99"}})
        named = await next_sample(ws, lambda s: s["view"]["filter"] == "idle-99")
    assert sample["processes"]["total"] == len(node.processes()) > 10_000
    assert len(sample["processes"]["rows"]) == 200  # the top rows only, not ten thousand
    assert len(orjson.dumps(sample)) < 64 * 1024
    assert [r[2] for r in named["processes"]["rows"][:3]] == ["idle-9999", "idle-9997", "idle-9995"]
    assert named["processes"]["matched"] == 56  # idle-99, idle-99x, idle-99xx (odd ones)
    cost = float(inspect(node, agent(node, observer))["sample_ms"])
    print(f"\none sample of {sample['processes']['total']} processes: {cost:.1f} ms")
    assert cost < 1000 * max(1.0, TIMEOUT / 5)  # cheap (tens of ms here; CI may be slower)


async def test_bad_options_raise_at_spawn(node: Node) -> None:
    for options, message in (({"token": ""}, "token"), ({"interval": 0}, "interval")):
        with pytest.raises(ValueError, match=message):
            await observe(node, **options)
    assert [p for p in node.processes() if node.process_info(p).behavior == "Agent"] == []


def test_observer_is_exported() -> None:
    import metakit.observer

    assert metakit.observer.__all__ == ["Observer"]
    assert metakit.observer.Observer.__mro__[1] is metakit.Process
