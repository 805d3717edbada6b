"""`router routes check` / `router routes test` and the small command-line things operators expect.

Unit level: no NATS, no Ray. The shipped cases for routes/default.yaml run here, in CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import msgspec
import pytest
import yaml
from click.testing import CliRunner

from router.codecs import EventDecoder
from router.config import config_schema, routes_schema
from router.control.cli import DURATION, main, run
from router.control.route_cases import load_cases, run_cases
from router.control.route_check import check_config, check_routes, known_event_types, subjects_overlap
from router.ingest.routing import RouteTable
from router.routes import path_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "router.example.yaml"
DEFAULT_ROUTES = path_of("default.yaml")
DEFAULT_CASES = path_of("default.cases.yaml")

# Line numbers matter below: keep the layout.
BROKEN_ROUTES = """\
routes:
  - name: orders
    match:
      subjects: ["retail.orders.>"]
      types: ["order.created"]
    destinations: [erp]
  - name: bad name
    destinations: [erp]
  - name: totals
    match:
      where:
        data.total: { gt: lots }
    destinations: [erp]
  - name: typo
    destination: [erp]
  - name: wrong-encoder
    destinations: [erp]
    encoder: canonicl
  - name: orders
    destinations: [erp]
"""


def config_with(tmp_path: Path, routes_text: str, mutate=None) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    (tmp_path / "routes.yaml").write_text(routes_text)
    raw["routes"] = "routes.yaml"
    if mutate:
        mutate(raw)
    p = tmp_path / "router.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def lines_of(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_a_sequence_in_two_lanes_is_refused_by_the_check_as_by_the_router(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text(yaml.safe_dump({"routes": [
        {"name": "created", "match": {"types": ["order.created"]}, "destinations": ["erp"],
         "ordering_key": ["data.order_id"], "priority": "high"},
        {"name": "cancelled", "match": {"types": ["order.cancelled"]}, "destinations": ["erp"],
         "ordering_key": ["data.order_id"], "priority": "low"},
    ]}, sort_keys=False))
    report = check_routes(f)  # the routes file alone: no config needed to see it
    assert [p.path for p in report.errors] == ["routes[1].priority"], lines_of(report)
    assert "one sequence needs one priority; expected `high`" in report.errors[0].message


def test_every_error_is_reported_at_once_with_its_line(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text(BROKEN_ROUTES)
    report = check_routes(f)
    got = {(p.line, p.path) for p in report.errors}
    assert got == {
        (7, "routes[1].name"),
        (12, "routes[2].match.where.data.total.gt"),
        (15, "routes[3].destination"),
        (18, "routes[4].encoder"),
        (19, "routes[5].name"),
    }, lines_of(report)
    shown = "\n".join(lines_of(report))
    assert f"error: {f}:12: routes[2].match.where.data.total.gt: Expected `float`, got `str`" in shown
    assert "routes[3].destination: unknown key; did you mean `destinations`?" in shown
    assert "unknown encoder `canonicl`; did you mean `canonical`?" in shown
    assert "duplicate route name `orders`" in shown
    assert report.exit_code() == 1
    # Without the config, what cannot be checked is said.
    assert any("-c" in n and "destinations" in n for n in report.notes)


def test_with_the_config_unknown_destinations_are_errors(tmp_path):
    p = config_with(tmp_path, BROKEN_ROUTES.replace("destinations: [erp]\n  - name: typo", "destinations: [erpp]\n"
                                                                                            "  - name: typo"))
    report = check_config(p)
    assert any(e.path == "routes[2].destinations[0]" and "unknown destination `erpp`; did you mean `erp`?" in e.message
               and e.line == 13 for e in report.errors), lines_of(report)


ONE_ROUTE = """\
routes:
  - name: orders
    match:
      subjects: ["retail.orders.>"]
      types: ["order.created"]
    destinations: [erp, marketplace, carrier]
"""


def warnings_for(tmp_path, routes_text=ONE_ROUTE, mutate=None) -> list[str]:
    report = check_config(config_with(tmp_path, routes_text, mutate))
    assert not report.errors, lines_of(report)
    return [f"{p.line}: {p.path}: {p.message}" for p in report.warnings]


def test_a_clean_config_has_no_problem(tmp_path):
    assert warnings_for(tmp_path) == []
    report = check_config(EXAMPLE)
    assert report.problems == [] and report.config is not None and len(report.routes) == 8


def test_warns_about_a_subject_no_source_captures(tmp_path):
    w = warnings_for(tmp_path, ONE_ROUTE.replace("retail.orders.>", "retail.order.*"))
    assert w == ["4: routes[0].match.subjects[0]: no source captures `retail.order.*` (sources capture "
                 "retail.orders.>, retail.inventory.>, retail.shipments.>, retail.returns.>, retail.refunds.>): "
                 "this route never sees an event"]


def test_warns_about_a_type_typo_with_the_near_miss(tmp_path):
    w = warnings_for(tmp_path, ONE_ROUTE.replace("order.created", "order.craeted"))
    assert len(w) == 1 and w[0].startswith("5: routes[0].match.types[0]: `order.craeted` is not a known order event type")
    assert w[0].endswith("did you mean `order.created`?")
    w = warnings_for(tmp_path, ONE_ROUTE.replace('"order.created"', '"ordr.*"'))
    assert len(w) == 1 and "outside the known event families" in w[0] and "did you mean `order`?" in w[0]


def test_warns_about_a_where_path_the_payload_does_not_have(tmp_path):
    text = ONE_ROUTE.replace('types: ["order.created"]\n',
                             'types: ["order.created"]\n      where:\n        data.chanel: { eq: web }\n')
    assert warnings_for(tmp_path, text) == [
        "7: routes[0].match.where.data.chanel: no field `chanel` in order payloads; did you mean `channel`?"]
    ok = text.replace("data.chanel", "data.ship_to.country")
    assert warnings_for(tmp_path, ok) == []
    into_list = text.replace("data.chanel", "data.lines.sku")
    assert "a `where` path cannot look inside a list" in warnings_for(tmp_path, into_list)[0]
    envelope = text.replace("data.chanel", "sorce")
    assert "did you mean `source`?" in warnings_for(tmp_path, envelope)[0]


def test_warns_about_a_destination_no_route_uses(tmp_path):
    w = warnings_for(tmp_path, ONE_ROUTE.replace("[erp, marketplace, carrier]", "[erp, marketplace]"))
    line = (tmp_path / "router.yaml").read_text().splitlines().index("  carrier:") + 1
    assert w == [f"{line}: destinations.carrier: no route sends anything to `carrier`"]


def test_warns_about_unset_variables_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("ERP_TOKEN_FOR_CHECK", raising=False)
    monkeypatch.delenv("NATS_TOKEN_FOR_CHECK", raising=False)

    def mutate(raw):
        raw["destinations"]["erp"]["auth"] = {"token_env": "ERP_TOKEN_FOR_CHECK"}
        raw["nats"]["token_env"] = "NATS_TOKEN_FOR_CHECK"
        raw["nats"]["tls"] = {"ca_file": str(tmp_path / "missing-ca.pem")}

    w = warnings_for(tmp_path, mutate=mutate)
    assert any("destinations.erp.auth.token_env: environment variable `ERP_TOKEN_FOR_CHECK` is not set" in x for x in w)
    assert any("nats.token_env: environment variable `NATS_TOKEN_FOR_CHECK` is not set" in x for x in w)
    assert any(f"nats.tls.ca_file: file `{tmp_path / 'missing-ca.pem'}` does not exist" in x for x in w)
    monkeypatch.setenv("ERP_TOKEN_FOR_CHECK", "x")
    monkeypatch.setenv("NATS_TOKEN_FOR_CHECK", "y")
    (tmp_path / "missing-ca.pem").write_text("-----")
    assert warnings_for(tmp_path, mutate=mutate) == []


def test_strict_makes_warnings_fail_and_unreadable_files_exit_2(tmp_path):
    cli = CliRunner()
    typo = tmp_path / "typo.yaml"
    typo.write_text(ONE_ROUTE.replace("order.created", "order.craeted"))
    res = cli.invoke(main, ["routes", "check", str(typo)])
    assert res.exit_code == 0, res.output
    assert re.search(r"warning: .*typo.yaml:5: routes\[0\]\.match\.types\[0\]: .*did you mean `order.created`", res.output)
    assert cli.invoke(main, ["routes", "check", str(typo), "--strict"]).exit_code == 1
    assert cli.invoke(main, ["routes", "check", DEFAULT_ROUTES, "-c", str(EXAMPLE), "--strict"]).exit_code == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN_ROUTES)
    res = cli.invoke(main, ["routes", "check", str(broken)])
    assert res.exit_code == 1 and "FAILED: 5 error(s)" in res.output
    res = cli.invoke(main, ["routes", "check", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "file not found" in res.output
    (tmp_path / "bad.yaml").write_text("routes: [\n")
    assert cli.invoke(main, ["routes", "check", str(tmp_path / "bad.yaml")]).exit_code == 2
    # `router check -c` is the same checker over the whole config.
    p = config_with(tmp_path, ONE_ROUTE.replace("order.created", "order.craeted"))
    assert cli.invoke(main, ["check", "-c", str(p)]).exit_code == 0
    assert cli.invoke(main, ["check", "-c", str(p), "--strict"]).exit_code == 1


def test_the_shipped_cases_cover_every_default_route_and_pass():
    res = CliRunner().invoke(main, ["routes", "test", DEFAULT_ROUTES, "--cases", DEFAULT_CASES])
    assert res.exit_code == 0, res.output
    assert re.search(r"^(\d+) passed, 0 failed$", res.output, re.M)
    res = CliRunner().invoke(main, ["routes", "test", DEFAULT_ROUTES, "--cases", DEFAULT_CASES, "-c", str(EXAMPLE)])
    assert res.exit_code == 0, res.output
    # Every route of the default table is exercised by some case.
    routes = check_routes(DEFAULT_ROUTES).routes
    table, decoder, hit = RouteTable(routes), EventDecoder(), set()
    for case in load_cases(DEFAULT_CASES):
        body = case.event.body
        try:
            ev = decoder.decode(body.encode() if isinstance(body, str) else msgspec.json.encode(body),
                                case.event.headers or None, case.event.subject)
        except Exception:
            continue
        hit |= {t.route for t in table.targets(ev)}
    assert hit == {r.name for r in routes}
    kinds = {next(k for k in ("destinations", "dead_letter", "unrouted") if getattr(c.expect, k))
             for c in load_cases(DEFAULT_CASES)}
    assert kinds == {"destinations", "dead_letter", "unrouted"}
    assert all(r.passed for r in run_cases(routes, load_cases(DEFAULT_CASES)))


def test_a_broken_case_fails_with_a_diff(tmp_path):
    cases = yaml.safe_load(Path(DEFAULT_CASES).read_text())
    first = cases[0]
    first["expect"]["destinations"]["erp"]["action"] = "UPDATED"  # it is CREATED
    first["expect"]["destinations"]["marketplace"] = True  # a web order does not go there
    unrouted = next(c for c in cases if c["expect"].get("unrouted"))
    unrouted["expect"] = {"dead_letter": "no such reason"}
    f = tmp_path / "cases.yaml"
    f.write_text(yaml.safe_dump(cases, sort_keys=False))
    res = CliRunner().invoke(main, ["routes", "test", DEFAULT_ROUTES, "--cases", str(f)])
    assert res.exit_code == 1, res.output
    out = res.output
    assert f"{len(cases) - 2} passed, 2 failed" in out
    assert f"FAIL  {first['name']}" in out
    diff = [line.strip() for line in out.splitlines()]
    assert '-      "action": "UPDATED",' in out and '+      "action": "CREATED",' in out
    assert '-    "marketplace": true' in out
    assert '-  "dead_letter": "no such reason"' in diff and '+  "unrouted": true' in diff


def test_a_malformed_cases_file_is_refused(tmp_path):
    f = tmp_path / "cases.yaml"
    f.write_text("- name: x\n  event: {subject: a, body: {}}\n  expect: {unrouted: true, dead_letter: y}\n")
    res = CliRunner().invoke(main, ["routes", "test", DEFAULT_ROUTES, "--cases", str(f)])
    assert res.exit_code == 2 and "expect exactly one of" in res.output
    f.write_text("- name: x\n  event: {subject: a}\n  expect: {unrouted: true}\n")
    res = CliRunner().invoke(main, ["routes", "test", DEFAULT_ROUTES, "--cases", str(f)])
    assert res.exit_code == 2 and "`body`" in res.output


def test_subjects_overlap():
    assert subjects_overlap("retail.orders.>", "retail.orders.web")
    assert subjects_overlap("retail.*.web", "retail.orders.>")
    assert subjects_overlap(">", "a")
    assert not subjects_overlap("retail.orders", "retail.orders.>")  # `>` needs at least one token
    assert not subjects_overlap("retail.orders.*", "retail.orders.web.eu")
    assert not subjects_overlap("retail.order.*", "retail.orders.>")


def test_known_event_types_come_from_the_generator():
    assert {"order.created", "order.updated", "order.cancelled", "inventory.counted", "refund.issued",
            "shipment.delivered", "return.received"} <= known_event_types()


def test_version():
    from importlib.metadata import version

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"router, version {version('peak-router')}"


def test_durations_on_the_command_line():
    ctx = run.make_context("run", ["-c", "router.yaml", "--drain-timeout", "30s"])
    assert ctx.params["drain_timeout"] == 30.0
    assert run.make_context("run", ["-c", "x", "--drain-timeout", "1.5m"]).params["drain_timeout"] == 90.0
    assert run.make_context("run", ["-c", "x", "--drain-timeout", "45"]).params["drain_timeout"] == 45.0
    assert run.make_context("run", ["-c", "x"]).params["drain_timeout"] == 60.0
    with pytest.raises(click.BadParameter, match="Expected a duration"):
        DURATION.convert("30 parsecs", None, None)


def test_json_schema_carries_field_docs():
    props = config_schema()["$defs"]["Source"]["properties"]
    assert props["fetch_batch"]["description"] == "messages per pull request"
    assert props["fetch_wait"]["description"].startswith("how long a pull waits to fill its batch")
    assert "``250ms``" in props["fetch_wait"]["description"]  # the Duration type's own doc stays
    http = config_schema()["$defs"]["HttpDestination"]["properties"]
    assert http["concurrency"]["description"] == "most requests in flight per pool actor"  # inherited field
    assert http["url"]["description"] == "the endpoint that takes a JSON array of records"
    match = routes_schema()["$defs"]["Match"]["properties"]
    assert match["where"]["description"].startswith("field path -> predicate")


def test_a_missing_routes_file_is_an_error_on_the_config_line(tmp_path):
    p = config_with(tmp_path, ONE_ROUTE, lambda raw: raw.update(routes="nowhere.yaml"))
    report = check_config(p)
    line = p.read_text().splitlines().index("routes: nowhere.yaml") + 1
    assert [(e.file, e.line, e.path) for e in report.errors] == [(str(p), line, "routes")]
    assert "routes file" in report.errors[0].message and "not found" in report.errors[0].message
    assert CliRunner().invoke(main, ["check", "-c", str(p)]).exit_code == 1
