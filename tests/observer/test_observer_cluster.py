"""The observer on a cluster (a real nats-server, two nodes): a page on node A
lists every node and shows node B's processes, sampled on B by B's observer,
and acts there under B's own rules (DESIGN.md §11)."""

from __future__ import annotations

import itertools
import os

import aiohttp
import orjson
import pytest
from observing import (
    Idle,
    agent,
    base,
    delta_rows,
    inspect,
    next_frame,
    next_sample,
    observe,
    rows_by_name,
    stream_url,
)

import metakit
from metakit.cluster import Cluster, local_server
from metakit.testing import TIMEOUT, LeakCheck, wait_until

pytestmark = pytest.mark.timeout(60)
_count = itertools.count()


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_a_page_on_one_node_shows_another() -> None:
    leaks = LeakCheck()
    namespace = f"observer{os.getpid()}-{next(_count)}"
    async with local_server() as url:
        a = metakit.Node("a@test", cluster=Cluster(url, namespace=namespace, heartbeat=0.2))
        b = metakit.Node("b@test", cluster=Cluster(url, namespace=namespace, heartbeat=0.2))
        c = metakit.Node("c@test", cluster=Cluster(url, namespace=namespace, heartbeat=0.2))
        async with a, b, c:
            await wait_until(lambda: a.nodes() == ["a@test", "b@test", "c@test"])
            observer_a, page = await observe(a, allow_actions=True)
            observer_b, _ = await observe(b, allow_actions=True)
            await b.spawn(Idle, name="only-on-b")
            victim = await b.spawn(Idle, name="victim-on-b")
            await wait_until(lambda: len(a.group_members("metakit-observer")) == 2)
            async with aiohttp.ClientSession() as http, http.ws_connect(stream_url(page)) as ws:
                here = await next_sample(ws)
                assert here["nodes"] == ["a@test", "b@test", "c@test"]
                assert here["observed"] == ["a@test", "b@test"]  # c has no observer
                assert "only-on-b" not in rows_by_name(here)
                await ws.send_json({"view": {"node": "b@test", "filter": "on-b"}})
                there = await next_sample(ws, lambda s: s["stats"]["name"] == "b@test")
                assert set(rows_by_name(there)) == {"only-on-b", "victim-on-b"}
                assert there["stats"]["processes"] == len(b.processes())
                assert there["actions"] is True
                # Then deltas, made here for this page from what b's agent rendered.
                late = await b.spawn(Idle, name="late-on-b")
                frame = await next_frame(
                    ws, lambda m: str(late.id) in [r[0] for r in delta_rows(m)]
                )
                assert str(late.id) in delta_rows(frame, "order")
                assert "late-on-b" in rows_by_name(await next_sample(ws))
                # The sampling ran on b, by b's agent; a's took no sample of b.
                assert int(inspect(b, agent(b, observer_b))["samples"]) >= 1
                victim_id = rows_by_name(there)["victim-on-b"][0]
                await ws.send_json({"view": {"node": "b@test", "selected": victim_id}})
                shown = await next_sample(ws, lambda s: (s["details"] or {}).get("id") == victim_id)
                assert shown["details"]["name"] == "victim-on-b"
                await ws.send_json({"view": {"node": "c@test"}})
                nobody = await next_sample(ws, lambda s: "error" in s)
                assert nobody["error"] == "no observer on node c@test"

                # An action on b, through a's page, under b's rules.
                gone = b.wait_exit(victim, TIMEOUT)
                body = {"node": "b@test", "action": "kill", "target": victim_id}
                async with http.post(
                    base(page) + "api/action",
                    data=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status == 200, await response.text()
                assert await gone == "kill"
            await wait_until(lambda: inspect(a, observer_a)["pages"] == "0")
    await leaks.check()


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_another_node_applies_its_own_rules() -> None:
    leaks = LeakCheck()
    namespace = f"observer{os.getpid()}-{next(_count)}"
    async with local_server() as url:
        a = metakit.Node("a@test", cluster=Cluster(url, namespace=namespace, heartbeat=0.2))
        b = metakit.Node("b@test", cluster=Cluster(url, namespace=namespace, heartbeat=0.2))
        async with a, b:
            await wait_until(lambda: a.nodes() == ["a@test", "b@test"])
            _, page = await observe(a, allow_actions=True)
            await observe(b)  # actions off on b
            target = await b.spawn(Idle, name="target")
            await wait_until(lambda: len(a.group_members("metakit-observer")) == 2)
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(stream_url(page)) as ws:
                    await ws.send_json({"view": {"node": "b@test"}})
                    there = await next_sample(ws, lambda s: s["stats"]["name"] == "b@test")
                    assert there["actions"] is False  # so the page offers none
                body = {"node": "b@test", "action": "kill", "target": "target"}
                async with http.post(
                    base(page) + "api/action",
                    data=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status == 403
                    assert "actions are off on b@test" in (await response.json())["message"]
            assert target in b.processes()
    await leaks.check()
