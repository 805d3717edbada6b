"""Property tests over everything hostile input reaches: the envelope decoder, route predicates,
encoders and the config loader. Whatever the input, each either succeeds or raises its documented
rejection type (``InvalidEvent`` for events, ``ConfigError`` for configs); nothing else escapes.
Unit level, no I/O: a few seconds in all (each property has a bounded number of examples)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.codecs import ENCODERS, Event, EventDecoder, InvalidEvent
from router.codecs.models import MODEL_BY_FAMILY
from router.config import ConfigError, load_config, parse_config
from router.control.demo import demo_config_dict
from router.ingest.routing import RouteTable
from router.jetstream.dead_letters import DeadLetter, DeadLetterPublisher, H, printable

# No example database: nothing written into the checkout; the examples are bounded for speed.
FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FAST, max_examples=50)

DECODER = EventDecoder()
CONFIG = parse_config(demo_config_dict("nats://127.0.0.1:4222", "http://127.0.0.1:1"), "<fuzz>")
DEFAULT_TABLE = RouteTable(CONFIG.route_list)
DEFAULT_ROUTES_LIST = yaml.safe_load(Path(demo_config_dict("", "")["routes"]).read_text())["routes"]
FAMILIES = sorted(MODEL_BY_FAMILY) + ["audit", "misc"]

# Text as hostile senders write it: control characters, escapes, bidi controls, astral planes.
int64 = st.integers(-(2**63), 2**64 - 1)  # what MessagePack can carry
hostile_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "\x1b[31mred\x1b[0m", "a\nb\r\nc", "\x00", "\u202eevil", "k" * 300, "ok-key-1"])
json_scalars = (st.none() | st.booleans() | int64
                | st.floats(allow_nan=False, allow_infinity=False) | hostile_text)
json_values = st.recursive(json_scalars | st.integers(min_value=-(2**70), max_value=2**70), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=20)
# MessagePack can carry more than JSON: bytes, extension types, non-string map keys, NaN.
msgpack_keys = st.one_of(hostile_text, int64, st.none(), st.tuples(int64, int64), st.binary(max_size=4))
msgpack_values = st.recursive(
    json_scalars | st.binary(max_size=8) | st.floats() | st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.binary(max_size=4))
    | st.datetimes(timezones=st.just(dt.timezone.utc)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(msgpack_keys, inner, max_size=4), max_leaves=20)

event_types = st.one_of(st.sampled_from([f"{f}.created" for f in FAMILIES] + ["order.cancelled", "shipment.requested",
                                                                               "return.requested", "refund.issued",
                                                                               "inventory.adjusted"]), hostile_text)
timestamps = st.sampled_from(["2026-11-27T10:00:00Z", "2026-11-27T10:00:00", "9999-12-31T23:59:59-23:59", "nope", ""])


def envelope(data_strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"type": event_types, "source": hostile_text, "occurred_at": timestamps, "data": data_strategy},
        optional={"idempotency_key": hostile_text | int64, "correlation_id": hostile_text},
    )


# Order-shaped data mixed with free-form data, so modelled families decode often enough to reach
# the predicates and encoders.
order_like = st.fixed_dictionaries({
    "order_id": hostile_text, "channel": st.sampled_from(["web", "marketplace"]) | hostile_text,
    "currency": st.sampled_from(["EUR", "eur"]), "total": st.floats(min_value=0, max_value=1e9) | json_scalars,
    "lines": st.lists(st.fixed_dictionaries({"sku": hostile_text, "quantity": st.integers(0, 5),
                                             "unit_price": st.floats(0, 100)}), max_size=2),
    "needs_label": st.booleans(), "sku": hostile_text, "location_id": hostile_text, "delta": int64,
    "reason": hostile_text, "shipment_id": hostile_text, "carrier": hostile_text, "return_id": hostile_text,
    "refund_id": hostile_text, "amount": st.floats(0, 100),
})
headers = st.none() | st.dictionaries(
    st.sampled_from(["Content-Type", "Idempotency-Key", "Nats-Msg-Id", "X-Other"]),
    st.sampled_from(["application/json", "application/msgpack", "application/cloudevents+json", "text/plain",
                     "application/msgpack; charset=x", ""]) | hostile_text, max_size=3)


def check_event(ev: Event) -> None:
    """What the ingest planner does with a decoded event: route, then encode for each target."""
    assert isinstance(ev, Event)
    for t in DEFAULT_TABLE.targets(ev):
        assert isinstance(t.encoder.encode(ev), bytes)
    for enc in ENCODERS.values():
        if enc.families is None or ev.type.split(".", 1)[0] in enc.families:
            try:
                assert isinstance(enc.encode(ev), bytes)
            except InvalidEvent:
                pass


def decode_or_reject(payload: bytes, hdrs: dict[str, str] | None, subject: str = "retail.orders.web") -> None:
    try:
        ev = DECODER.decode(payload, hdrs, subject)
    except InvalidEvent as exc:
        assert str(exc), "a rejection carries a reason"
        return
    check_event(ev)


@FAST
@given(st.binary(max_size=200), headers)
def test_decoder_on_arbitrary_bytes(payload, hdrs):
    decode_or_reject(payload, hdrs)


@FAST
@given(envelope(order_like | json_values), headers, st.integers(0, 3), st.data())
def test_decoder_on_json_envelopes_with_damage(body, hdrs, damage, data):
    if hdrs:
        hdrs.pop("Content-Type", None)
    payload = json.dumps(body).encode()
    if damage == 1:  # invalid UTF-8 somewhere (inside a string or not)
        at = data.draw(st.integers(0, len(payload)))
        payload = payload[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) + payload[at:]
    elif damage == 2:  # nested far past any decoder's limit, in `data`
        body["data"] = {"deep": None}
        payload = json.dumps(body).encode().replace(b"null", b"[" * 10_000 + b"]" * 10_000)
    elif damage == 3:  # cut short
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    decode_or_reject(payload, hdrs)


@FAST
@given(envelope(order_like | msgpack_values), headers)
def test_decoder_on_msgpack_envelopes(body, hdrs):
    hdrs = dict(hdrs or {}, **{"Content-Type": "application/msgpack"})
    decode_or_reject(msgspec.msgpack.encode(body), hdrs)


@FAST
@given(msgpack_values, hostile_text, hostile_text)
def test_headers_alone_carry_the_key_with_the_same_rules(data, key, msg_id):
    body = {"type": "misc.note", "source": "s", "occurred_at": "2026-11-27T10:00:00Z", "data": {"v": data}}
    for hdrs in ({"Idempotency-Key": key}, {"Nats-Msg-Id": msg_id}):
        try:
            ev = DECODER.decode(msgspec.msgpack.encode(body), {**hdrs, "Content-Type": "application/msgpack"})
        except InvalidEvent:
            continue
        assert 1 <= len(ev.idempotency_key) <= 256
        assert not re.search("[\x00-\x1f\x7f-\x9f]", ev.idempotency_key)
        check_event(ev)


predicates = st.fixed_dictionaries({}, optional={
    "eq": json_values, "ne": json_values, "in": st.lists(json_values, max_size=3),
    "not_in": st.lists(json_values, max_size=3), "gt": st.floats(allow_nan=False), "lte": st.floats(allow_nan=False),
    "exists": st.booleans()})
field_paths = st.sampled_from(["data.channel", "data.total", "data.lines", "data.x.y", "source", "type",
                               "occurred_at", "idempotency_key", "data", "data.0", "__class__"])


@FEW
@given(st.lists(st.tuples(field_paths, predicates), min_size=1, max_size=3),
       st.sampled_from(["misc.note", "order.created"]), order_like | json_values | msgpack_values)
def test_predicates_never_raise(where, type_, data):
    try:
        raw = demo_config_dict("nats://x:4222", "http://x")
        raw["routes"] = [{"name": "fuzz", "match": {"where": dict(where)}, "destinations": ["erp"]}]
        table = RouteTable(parse_config(raw, "<fuzz>").route_list)
    except ConfigError:
        return
    ev = Event("k", "c", type_, "s", dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc), data, "retail.orders.web")
    assert isinstance(table.targets(ev), list)


def _mutate(obj: Any, path: list[Any], value: Any) -> Any:
    if not path or not isinstance(obj, (dict, list)) or not obj:
        return value
    key = list(obj)[path[0] % len(obj)] if isinstance(obj, dict) else path[0] % len(obj)
    obj[key] = _mutate(obj[key], path[1:], value)
    return obj


@FAST
@given(st.lists(st.integers(0, 50), max_size=4), json_values | predicates | st.lists(json_values))
def test_config_loader_rejects_with_config_error_only(path, value):
    raw = demo_config_dict("nats://127.0.0.1:4222", "http://127.0.0.1:1")
    raw["routes"] = copy.deepcopy(DEFAULT_ROUTES_LIST)
    raw = _mutate(raw, path, value)
    try:
        parse_config(raw, "<fuzz>")
    except ConfigError as exc:
        assert str(exc)


@FEW
@given(st.text(max_size=200) | st.sampled_from(["a: [", "nats: {url: 1}", "routes: 5", ":\n  - !!python/object:os.system x",
                                                "\x00", "sources: [{name: ' '}]"]))
def test_config_file_loader_on_arbitrary_text(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "router.yaml"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(p)
        except ConfigError as exc:
            assert str(exc)


@FAST
@given(hostile_text | st.text())
def test_printable_leaves_nothing_a_terminal_would_act_on(text):
    out = printable(text)
    assert out.isprintable()
    if text.isprintable():
        assert out == text


@FEW
@given(st.integers(0, 30_000), hostile_text, st.integers(8_000, 20_000))
def test_dead_letter_always_fits_max_payload(size, reason, max_payload):
    pub = DeadLetterPublisher(None, "DLQ", "router.dlq", max_payload=max_payload)  # type: ignore[arg-type]
    letter = pub.ingest_failure("orders", b"x" * size, reason, subject="retail.orders.\x1b",
                                stream_seq=7, headers={"Idempotency-Key": reason, "Content-Type": "text/\x07"})
    fitted = pub.fitted(letter)
    head = 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in fitted.headers.items())
    assert len(fitted.payload) + head <= max_payload
    assert all(v.isprintable() for v in fitted.headers.values())
    if fitted is not letter:
        assert fitted.headers[H.ORIGINAL_SIZE] == str(size)
        assert letter.payload.startswith(fitted.payload)
        assert fitted.headers[H.ORIGINAL_DIGEST].startswith("sha256:")
    assert isinstance(fitted, DeadLetter)


class _Msg:
    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.subject, self.data, self.headers = subject, data, headers


def test_planner_rejects_per_message_failures_and_plan_each_finds_the_one_at_fault():
    from router.ingest.plan import IngestPlanner

    def order(key: str, channel: str) -> bytes:
        return json.dumps({"idempotency_key": key, "type": "order.created", "source": "web",
                           "occurred_at": "2026-11-27T10:00:00Z", "data": {
                               "order_id": key, "channel": channel, "currency": "EUR", "total": 1.0,
                               "lines": [{"sku": "A", "quantity": 1, "unit_price": 1.0}]}}).encode()

    msgs = [_Msg("retail.orders.web", order("web-1", "web")), _Msg("retail.orders.web", b"\xff"),
            _Msg("retail.orders.web", b'{"type": "order.created", "source": "\xff"}'),
            _Msg("retail.orders.mkt", order("mkt-1", "marketplace")), _Msg("retail.orders.web", order("web-2", "web"))]
    seqs = [1, 2, 3, 4, 5]
    # Per message: a bad one is rejected, the batch goes on.
    plan = IngestPlanner("orders", DEFAULT_TABLE, {"erp": 1, "marketplace": 1, "carrier": 1}).plan(msgs, seqs)
    assert [i for i, _ in plan.rejected] == [1, 2]
    assert "not valid UTF-8" in plan.rejected[1][1]
    assert sorted(i for _, idx in plan.work.values() for i in idx) == [0, 3, 3, 4]
    # A batch-level failure (here: a destination the planner has no pool for) makes `plan` raise;
    # `plan_each` rejects only the message that causes it.
    broken = IngestPlanner("orders", DEFAULT_TABLE, {"erp": 1, "carrier": 1})
    try:
        broken.plan(msgs, seqs)
        raise AssertionError("expected the batch to fail")
    except KeyError:
        pass
    each = broken.plan_each(msgs, seqs)
    assert [i for i, _ in each.rejected] == [1, 2, 3]
    assert each.rejected[2][1].startswith("planning failed: KeyError")
    assert {k: idx for k, (_, idx) in each.work.items()} == {("erp", 0): [0, 4]}


def test_planner_sends_each_keys_hash_and_picks_the_shard_a_replay_would():
    """The sink actors take the planner's key hashes as theirs (dedup index, journal), and a DLQ
    replay or reconciliation picks a record's shard with ``shard_of``: both must agree."""
    from router.delivery.key_hash import key_hash
    from router.ingest.plan import IngestPlanner, shard_of
    from router.loadtest.retail_events import RetailEventFactory

    factory = RetailEventFactory(seed=3)
    msgs = [_Msg(e.subject, e.payload) for e in (factory.mix() for _ in range(200))]
    pools = {"erp": 3, "marketplace": 1, "carrier": 2}
    planner = IngestPlanner("orders", DEFAULT_TABLE, pools)
    for plan in (planner.plan(msgs, list(range(200))), planner.plan_each(msgs, list(range(200)))):
        assert plan.work and not plan.rejected
        for (dest, shard), (records, _) in plan.work.items():
            assert records.hashes == [key_hash(k) for k in records.keys] == records.key_hashes()
            assert all(shard_of(k, pools[dest]) == shard for k in records.keys), dest
            # each record's correlation id beside it, the one in the record (for a NATS header)
            assert records.correlation_ids == [json.loads(p)["correlation_id"] for p in records.payloads]
