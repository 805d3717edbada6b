"""The emulated destinations count what they received the same way whether they keep the first
records whole (for the contract checks) or read only the keys of the rest (the lean path)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

import router.loadtest.sink_emulator as emulator_module
from router.loadtest.sink_emulator import SinkEmulator


def _records(*keys: str, **extra: object) -> bytes:
    return orjson.dumps([{"idempotency_key": k, "correlation_id": f"c-{k}", "type": "order.created",
                          "data": {"lines": [{"sku": "A", "qty": 1}]}, **extra} for k in keys])


@pytest.mark.parametrize("kept_whole", [0, 10_000])  # 0: every request takes the lean path
def test_counts_and_refusals_on_both_paths(monkeypatch, kept_whole):
    monkeypatch.setattr(emulator_module, "_SAMPLES", kept_whole)
    json = {"Content-Type": "application/json"}
    checked = []  # requests that went the checked way
    original = SinkEmulator._checked_records
    monkeypatch.setattr(SinkEmulator, "_checked_records",
                        lambda self, *a: checked.append(1) or original(self, *a))

    async def go():
        async with TestClient(TestServer(SinkEmulator().app)) as client:
            async def post(body: bytes, headers: dict[str, str] = json) -> tuple[int, str]:
                r = await client.post("/erp", data=body, headers=headers)
                return r.status, await r.text()

            assert await post(_records("a", "b"), {**json, "Router-Routes-Revision": "1"}) == (
                200, '{"accepted":2}')
            assert (await post(_records("b", "c"), {**json, "Router-Routes-Revision": "2"}))[0] == 200
            # a key twice in one request: both receipts count, the first and the second
            assert (await post(_records("h", "h"), {**json, "Router-Routes-Revision": "3"}))[0] == 200
            # what is wrong is named the same way on either path, and nothing is counted
            no_cid = orjson.dumps([{"idempotency_key": "d", "correlation_id": "c"}, {"idempotency_key": "e"}])
            assert await post(no_cid) == (400, "record 1 lacks correlation_id")
            assert await post(b"[{") == (400, "body is not JSON: unexpected end of data: line 1 column 3 (char 2)")
            assert await post(b'{"a": 1}') == (400, "body must be a JSON array of records")
            assert await post(_records("f"), {"Content-Type": "text/plain"}) == (
                415, "Content-Type must be application/json")
            await client.post("/faults/erp", json={"reject_keys": ["g"]})
            assert await post(_records("f", "g")) == (400, "record 1: g fails validation")

            stats = await (await client.get("/stats")).json()
            received = await (await client.get("/received/erp")).json()
            revisions = await (await client.get("/revisions/erp")).json()
            receipts = await (await client.get("/receipts/erp")).json()
            records = await (await client.get("/records/erp")).json()
            return stats["erp"], received, revisions, receipts, records

    stats, received, revisions, receipts, records = asyncio.run(go())
    assert received == {"a": 1, "b": 2, "c": 1, "h": 2}
    assert stats["records"] == 6 and stats["unique"] == 4 and stats["duplicates"] == 2
    assert stats["rejected"] == 5 and stats["requests"] == 8 and stats["batches"] == 1  # no batch key sent
    assert revisions == {"a": ["1"], "b": ["1", "2"], "c": ["2"], "h": ["3", "3"]}
    assert sorted(receipts) == ["a", "b", "c", "h"] and receipts["b"] == receipts["a"] <= receipts["c"]
    assert len(records) == min(kept_whole, 6)
    assert len(checked) == (8 if kept_whole else 4)  # lean: only the malformed requests are checked
