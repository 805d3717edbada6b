"""Route table tests: sample events and what they must produce, run without NATS or Ray.

A cases file is a YAML list::

    - name: web order is booked in the ERP
      event:
        subject: retail.orders.web
        headers: {Content-Type: application/json}     # optional
        body: {idempotency_key: o-1, type: order.created, ...}   # a mapping, or the raw bytes as a string
      expect:
        destinations:
          erp: {document_type: SALES_ORDER, action: CREATED}   # fields the record must have
          marketplace: true                                     # it gets a record, whatever is in it

``expect`` holds exactly one of ``destinations`` (every destination the event goes to, no more),
``dead_letter`` (a part of the reason it is dead-lettered with) or ``unrouted: true``. A record
mapping names the fields that matter: others may be there too; nested mappings are compared
the same way, lists in full.

Each event goes through the same code as in the router (``IngestPlanner``: the envelope decoder,
the route table, the encoders). A failing case is shown as a unified diff of what was expected
against what came out, seen through the expectation (only the fields it names).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import yaml

from router.config import ConfigError, Route
from router.ingest.plan import IngestPlanner
from router.ingest.routing import RouteTable

__all__ = ["Case", "CaseResult", "load_cases", "run_cases"]


class CaseEvent(msgspec.Struct, forbid_unknown_fields=True):
    subject: str
    body: dict[str, Any] | str
    headers: dict[str, str] = {}


class CaseExpect(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    destinations: dict[str, dict[str, Any] | bool] | None = None
    dead_letter: str | None = None
    unrouted: bool = False


class Case(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    event: CaseEvent
    expect: CaseExpect


class CaseResult(NamedTuple):
    name: str
    passed: bool
    diff: str  # empty when passed


class _Message(NamedTuple):
    subject: str
    data: bytes
    headers: dict[str, str] | None


def load_cases(path: str | Path) -> list[Case]:
    """The cases of a file; ConfigError naming the case and key when one is malformed."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "", "file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), "", f"not valid YAML: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(str(p), "", "Expected a non-empty list of cases (name, event, expect)")
    cases = []
    for i, c in enumerate(raw):
        try:
            case = msgspec.convert(c, Case)
        except msgspec.ValidationError as exc:
            raise ConfigError(str(p), f"[{i}]", str(exc).replace("`$", f"`$[{i}]")) from None
        given = [k for k in ("destinations", "dead_letter") if getattr(case.expect, k) is not None]
        given += ["unrouted"] if case.expect.unrouted else []
        if len(given) != 1:
            raise ConfigError(str(p), f"[{i}].expect", f"case `{case.name}`: expect exactly one of "
                              f"destinations, dead_letter, unrouted: true (got {', '.join(given) or 'none'})")
        cases.append(case)
    return cases


def _plain(value: Any) -> Any:
    """YAML values as JSON would carry them (an unquoted timestamp becomes its RFC 3339 text)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _seen_through(actual: Any, expected: Any) -> Any:
    """``actual`` with only the mapping keys ``expected`` names (recursively)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _seen_through(actual[k], v) for k, v in expected.items() if k in actual}
    return actual


def _outcome(planner: IngestPlanner, case: Case) -> dict[str, Any]:
    ev = case.event
    body = ev.body.encode() if isinstance(ev.body, str) else msgspec.json.encode(ev.body)
    msgs = [_Message(ev.subject, body, ev.headers or None)]
    try:
        plan = planner.plan(msgs, [1])
    except Exception:  # as the ingest actor does: the slow path names what failed
        plan = planner.plan_each(msgs, [1])
    if plan.rejected:
        return {"dead_letter": plan.rejected[0][1]}
    if plan.unrouted:
        return {"unrouted": True}
    return {"destinations": {dest: json.loads(payload) for (dest, _), (records, _) in plan.work.items()
                             for _, payload, _ in records}}


def _run_one(planner: IngestPlanner, case: Case) -> CaseResult:
    actual = _outcome(planner, case)
    exp = case.expect
    if exp.dead_letter is not None:
        expected: dict[str, Any] = {"dead_letter": exp.dead_letter}
        passed = exp.dead_letter in actual.get("dead_letter", "")
    elif exp.unrouted:
        expected = {"unrouted": True}
        passed = actual == expected
    else:
        want = _plain(exp.destinations)
        expected = {"destinations": want}
        got = actual.get("destinations")
        if got is not None:
            actual = {"destinations": {d: (True if want.get(d) is True else _seen_through(r, want.get(d)))
                                       for d, r in got.items()}}
        passed = actual == expected
    if passed:
        return CaseResult(case.name, True, "")
    a = json.dumps(expected, indent=2, sort_keys=True).splitlines()
    b = json.dumps(actual, indent=2, sort_keys=True).splitlines()
    diff = "\n".join(difflib.unified_diff(a, b, "expected", "actual", lineterm=""))
    return CaseResult(case.name, False, diff)


def run_cases(routes: list[Route], cases: list[Case]) -> list[CaseResult]:
    table = RouteTable(routes)
    planner = IngestPlanner("cases", table, {d: 1 for d in table.destinations})
    return [_run_one(planner, c) for c in cases]
