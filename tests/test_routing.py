from pathlib import Path

import orjson
import pytest

from router.codecs import EventDecoder
from router.config import Match, Predicate, Route, load_config
from router.ingest.routing import RouteTable, wildcard_match

EXAMPLE = Path(__file__).resolve().parent.parent / "router.example.yaml"

dec = EventDecoder()


@pytest.mark.parametrize("pattern,value,ok", [
    ("retail.orders.>", "retail.orders.web", True),
    ("retail.orders.>", "retail.orders.web.eu", True),
    ("retail.orders.>", "retail.orders", False),
    ("retail.*.web", "retail.orders.web", True),
    ("retail.*.web", "retail.orders.pos", False),
    ("order.*", "order.created", True),
    ("order.*", "order.created.v2", False),
    (">", "anything.at.all", True),
    ("order.created", "order.created", True),
])
def test_wildcards(pattern, value, ok):
    assert wildcard_match(pattern, value) is ok


def event(type_, data, subject, source="test"):
    body = {"idempotency_key": "k", "type": type_, "source": source, "occurred_at": "2026-11-27T10:00:00Z", "data": data}
    return dec.decode(orjson.dumps(body), None, subject)


ORDER = {"order_id": "O", "currency": "EUR", "total": 1.0, "lines": [{"sku": "A", "quantity": 1, "unit_price": 1.0}]}
SHIP = {"shipment_id": "S", "order_id": "O", "carrier": "ups"}
RET = {"order_id": "O", "return_id": "R", "lines": [{"sku": "A", "quantity": 1}]}


# The default route table, case by case: (event, the destinations it must reach).
DEFAULT_CASES = [
    (("order.created", {**ORDER, "channel": "web"}, "retail.orders.web"), {"erp"}),
    (("order.cancelled", {**ORDER, "channel": "marketplace"}, "retail.orders.marketplace"), {"erp", "marketplace"}),
    (("inventory.adjusted", {"sku": "A", "location_id": "dc", "delta": 1, "reason": "r"}, "retail.inventory.dc"),
     {"marketplace", "erp"}),
    (("shipment.requested", SHIP, "retail.shipments.ups"), {"carrier"}),
    (("shipment.dispatched", SHIP, "retail.shipments.ups"), {"erp", "marketplace"}),
    (("return.requested", {**RET, "needs_label": True}, "retail.returns.web"), {"carrier", "erp"}),
    (("return.requested", {**RET, "needs_label": False}, "retail.returns.web"), {"erp"}),
    (("refund.issued", {"refund_id": "F", "order_id": "O", "amount": 5.0, "currency": "EUR"}, "retail.refunds.web"),
     {"erp"}),
    (("promo.started", {"code": "BF"}, "retail.orders.web"), set()),
    (("order.created", {**ORDER, "channel": "web"}, "legacy.orders.web"), set()),
]


@pytest.mark.parametrize("ev,dests", DEFAULT_CASES)
def test_default_routes(ev, dests):
    table = RouteTable(load_config(EXAMPLE).route_list)
    got = table.targets(event(*ev))
    assert {t.destination for t in got} == dests
    assert len(got) == len(dests)  # each destination once


def test_first_route_picks_the_encoder():
    table = RouteTable(load_config(EXAMPLE).route_list)
    [t] = table.targets(event("shipment.requested", SHIP, "retail.shipments.ups"))
    assert t.encoder.name == "carrier_label_request" and t.route == "shipments-to-carrier"


def route(where, dests=("erp",)):
    return Route(name="r", destinations=list(dests), match=Match(where=where))


@pytest.mark.parametrize("pred,total,ok", [
    (Predicate(gt=100), 150.0, True),
    (Predicate(gt=100), 50.0, False),
    (Predicate(gte=50, lt=60), 50.0, True),
    (Predicate(lte=10), 10.0, True),
    (Predicate(eq=7.5), 7.5, True),
    (Predicate(ne=7.5), 7.5, False),
    (Predicate(in_=[1.0, 2.0]), 2.0, True),
    (Predicate(not_in=[1.0, 2.0]), 2.0, False),
])
def test_predicates(pred, total, ok):
    table = RouteTable([route({"data.total": pred})])
    ev = event("order.created", {**ORDER, "channel": "web", "total": total}, "s")
    assert bool(table.targets(ev)) is ok


def test_missing_field_only_satisfies_negative_predicates():
    ev = event("order.created", {**ORDER, "channel": "web"}, "s")  # no customer_id
    assert not RouteTable([route({"data.customer_id": Predicate(eq="C1")})]).targets(ev)
    assert RouteTable([route({"data.customer_id": Predicate(ne="C1")})]).targets(ev)
    assert RouteTable([route({"data.customer_id": Predicate(exists=False)})]).targets(ev)
    assert not RouteTable([route({"data.customer_id": Predicate(exists=True)})]).targets(ev)
    assert RouteTable([route({"source": Predicate(eq="test")})]).targets(ev)


def test_events_matching_the_same_routes_share_one_target_list():
    """The planner prepares each target list once per batch, by identity: the same routes matched
    must give the same list, and other routes matched a list of their own."""
    big = Route(name="big", destinations=["erp", "carrier"], match=Match(where={"data.total": Predicate(gt=100)}))
    every = Route(name="every", destinations=["marketplace", "erp"], match=Match(types=["order.*"]))
    table = RouteTable([big, every])

    def targets(total: float) -> list:
        return table.targets(event("order.created", {**ORDER, "channel": "web", "total": total}, "s"))

    large, small = targets(150.0), targets(50.0)
    assert [(t.route, t.destination) for t in large] == [("big", "erp"), ("big", "carrier"), ("every", "marketplace")]
    assert [(t.route, t.destination) for t in small] == [("every", "marketplace"), ("every", "erp")]
    assert targets(200.0) is large and targets(10.0) is small
    plain = RouteTable([every])
    ev = event("order.created", {**ORDER, "channel": "web"}, "s")
    assert plain.targets(ev) is plain.targets(ev)


def test_each_record_carries_its_own_routes_ordering_key_hash():
    """The planner hashes a route's ordering key once for all its destinations; a record routed by
    another route (another key, or none) carries that route's, and the shard follows the hash."""
    from types import SimpleNamespace

    from router.ingest.plan import IngestPlanner
    from router.ingest.routing import ordering_hash

    by_order = Route(name="by-order", destinations=["erp", "carrier"], match=Match(where={"data.total": Predicate(gt=100)}),
                     ordering_key=["data.order_id"])
    by_channel = Route(name="by-channel", destinations=["marketplace", "erp"], match=Match(types=["order.*"]),
                       ordering_key=["data.channel", "source"])
    unordered = Route(name="copy", destinations=["audit"], match=Match(types=["order.*"]))
    table = RouteTable([by_order, by_channel, unordered])
    pools = {"erp": 3, "carrier": 2, "marketplace": 4, "audit": 1}
    msgs, events = [], []
    for n, total in enumerate([150.0, 50.0, 300.0, 20.0]):
        body = {"idempotency_key": f"k{n}", "type": "order.created", "source": f"s{n % 2}",
                "occurred_at": "2026-11-27T10:00:00Z",
                "data": {**ORDER, "order_id": f"O{n}", "channel": "web" if n % 3 else "pos", "total": total}}
        msgs.append(SimpleNamespace(subject="retail.orders.web", data=orjson.dumps(body), headers=None))
        events.append(dec.decode(msgs[-1].data, None, "retail.orders.web"))
    plan = IngestPlanner("orders", table, pools).plan(msgs, [1, 2, 3, 4])
    route_of = {}  # (message, destination) -> the route that sent it there (the first, as the table does)
    for i, ev in enumerate(events):
        for t in table.targets(ev):
            route_of[(i, t.destination)] = {"by-order": by_order, "by-channel": by_channel, "copy": unordered}[t.route]
    seen = 0
    for (dest, shard), (records, idx) in plan.work.items():
        okeys = records.order_keys or [0] * len(records)
        for i, okey in zip(idx, okeys):
            paths = tuple(p.split(".") for p in route_of[(i, dest)].ordering_key)
            assert okey == ordering_hash(events[i], paths), (i, dest)
            assert shard == (okey or records.hashes[idx.index(i)]) % pools[dest]
            seen += 1
    assert seen == len(route_of) == 4 * 3 + 2  # every order: erp, marketplace, audit; the two big ones carrier too


def _plan_messages(bodies: list[tuple[str, dict, str]]) -> list:
    from types import SimpleNamespace

    msgs = []
    for n, (type_, data, subject) in enumerate(bodies):
        body = {"idempotency_key": f"k{n}", "type": type_, "source": "s", "occurred_at": "2026-11-27T10:00:00Z",
                "data": data}
        msgs.append(SimpleNamespace(subject=subject, data=orjson.dumps(body), headers=None))
    return msgs


def _rows(records, idx) -> list[tuple]:
    """A shard's records, a row each, in message order."""
    return sorted(zip(idx, records.keys, records.payloads, records.origins, records.published,
                      records.order_key_column(), records.lane_column(), records.key_hashes(),
                      records.correlation_id_column()))


def test_destinations_that_get_the_same_records_share_one_batch_and_each_gets_what_it_would_alone():
    """A fan-out with nothing that differs by destination is gathered once and encoded once for
    all its destinations; where other records go to the same shard too (another route, an ordering
    key, a lane, a pool), each shard still gets exactly what planning message by message gives it."""
    from router.ingest.plan import IngestPlanner

    fan = Route(name="fan", destinations=["erp", "marketplace"], match=Match(types=["order.*"]))
    stock = Route(name="stock", destinations=["erp"], match=Match(types=["inventory.*"]), priority="low")
    returns = Route(name="returns", destinations=["erp", "audit"], match=Match(types=["return.*"]),
                    ordering_key=["data.order_id"])
    ships = Route(name="ships", destinations=["carrier", "audit"], match=Match(types=["shipment.*"]))
    pools = {"erp": 1, "marketplace": 1, "audit": 1, "carrier": 2}
    stock_event = ("inventory.adjusted", {"sku": "A", "location_id": "dc", "delta": 1, "reason": "r"}, "retail.inventory.dc")
    bodies = [("order.created", {**ORDER, "channel": "web", "order_id": f"O{n}"}, "retail.orders.web") if n % 4 == 0
              else stock_event if n % 4 == 1
              else ("return.requested", {**RET, "order_id": f"O{n % 3}"}, "retail.returns.web") if n % 4 == 2
              else ("shipment.dispatched", SHIP, "retail.shipments.ups") for n in range(40)]
    msgs = _plan_messages(bodies)
    seqs, published = list(range(1, 41)), [1_000 + n for n in range(40)]
    planner = IngestPlanner("s", RouteTable([fan, stock, returns, ships]), pools)
    plan = planner.plan(msgs, seqs, published)
    one_by_one = planner.plan_each(msgs, seqs, published)
    assert plan.work.keys() == one_by_one.work.keys()
    for shard, (records, idx) in plan.work.items():
        assert _rows(records, idx) == _rows(*one_by_one.work[shard]), shard
    assert ("carrier", 0) in plan.work and ("carrier", 1) in plan.work

    only_fan = IngestPlanner("s", RouteTable([fan]), pools).plan(msgs, seqs, published)
    erp, marketplace = only_fan.work[("erp", 0)], only_fan.work[("marketplace", 0)]
    assert erp[0] is marketplace[0] and len(erp[0]) == 10, "one batch for both destinations"
