"""``router status --url http://host:port``: what the router is doing, read from its ``/metrics``.

Scrapes twice (``interval`` apart) to turn counters into rates, then redraws a table in place
every ``interval`` seconds: per source the rate acked, lag (consumer pending) and ack-pending, and
the lag of each partition of a partitioned source;
per destination the delivery rate, p50 / p99 end-to-end latency, breaker, parked backlog,
dead letters; per workflow with an SLO the share within it and the breaches. ``--once --json``
prints one snapshot as JSON for scripts.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["parse_scrape", "render", "run_status", "scrape", "view"]

_BREAKER = {0: "closed", 1: "half_open", 2: "open"}


def scrape(url: str, timeout: float = 5.0) -> str:
    target = url.rstrip("/")
    if not target.endswith("/metrics"):
        target += "/metrics"
    with urllib.request.urlopen(target, timeout=timeout) as r:  # noqa: S310 - an operator-given URL
        return r.read().decode()


def parse_scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _by(samples: dict, name: str, label: str) -> dict[str, float]:
    return {labels[label]: v for labels, v in samples.get(name, []) if label in labels}


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """From cumulative (le, count) buckets, quantile ``q`` interpolated linearly inside its bucket,
    as Prometheus' ``histogram_quantile`` does (None: no data; past the last bound: that bound)."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lower
            return round(lower + (le - lower) * (rank - below) / (n - below), 4) if n > below else le
        lower, below = le, n
    return lower


def _latency(samples: dict, name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, float | None]]:
    per: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for labels, v in samples.get(f"{name}_bucket", []):
        per.setdefault(tuple(labels.get(k, "") for k in keys), []).append((float(labels["le"]), v))
    return {k: {"p50": _quantile(b, 0.5), "p99": _quantile(b, 0.99)} for k, b in per.items()}


def view(samples: dict, earlier: dict | None = None, seconds: float = 0.0) -> dict[str, Any]:
    """The figures shown, from one scrape (and an earlier one, for rates)."""

    def rate(name: str, label: str) -> dict[str, float]:
        now = _by(samples, name, label)
        if not earlier or seconds <= 0:
            return {}
        before = _by(earlier, name, label)
        return {k: max(v - before.get(k, 0.0), 0.0) / seconds for k, v in now.items()}

    acked, acked_rate = _by(samples, "router_source_acked_total", "source"), rate("router_source_acked_total", "source")
    pending = _by(samples, "router_source_consumer_pending", "source")
    ack_pending = _by(samples, "router_source_consumer_ack_pending", "source")
    invalid = _by(samples, "router_source_dead_lettered_total", "source")
    partitions: dict[str, dict[int, int]] = {}
    for labels, v in samples.get("router_source_partition_consumer_pending", []):
        partitions.setdefault(labels["source"], {})[int(labels["partition"])] = int(v)
    sources = {s: {"acked": int(acked[s]), "acked_per_s": round(acked_rate.get(s, 0.0), 1),
                   "pending": int(pending[s]) if s in pending else None,
                   "ack_pending": int(ack_pending[s]) if s in ack_pending else None,
                   "invalid": int(invalid.get(s, 0)),
                   **({"partition_pending": [v for _, v in sorted(partitions[s].items())]} if s in partitions else {})}
               for s in sorted(acked)}
    outcomes: dict[str, dict[str, float]] = {}
    for labels, v in samples.get("router_records_total", []):
        outcomes.setdefault(labels["destination"], {})[labels["outcome"]] = v
    delivered_rate = rate("router_destination_delivered_total", "destination")
    breaker = _by(samples, "router_destination_breaker_state", "destination")
    backlog = _by(samples, "router_destination_park_backlog", "destination")
    latency = _latency(samples, "router_destination_latency_seconds", ("destination",))
    destinations = {}
    for d in sorted(outcomes):
        o = outcomes[d]
        lat = latency.get((d,), {"p50": None, "p99": None})
        destinations[d] = {"delivered": int(o.get("delivered", 0)), "delivered_per_s": round(delivered_rate.get(d, 0.0), 1),
                           "duplicates": int(o.get("duplicates", 0)), "parked_backlog": int(backlog.get(d, 0)),
                           "replayed": int(o.get("replayed", 0)), "dead_lettered": int(o.get("dead_lettered", 0)),
                           "breaker": _BREAKER.get(int(breaker.get(d, 0)), "?"),
                           "latency_p50_s": lat["p50"], "latency_p99_s": lat["p99"]}
    within = {(l["workflow"], l["destination"]): v for l, v in samples.get("router_workflow_slo_within_ratio", [])}
    breaches = {(l["workflow"], l["destination"]): v for l, v in samples.get("router_workflow_slo_breaches_total", [])}
    wf_latency = _latency(samples, "router_workflow_latency_seconds", ("workflow", "destination"))
    workflows = {w: {"destination": d, "within_slo": round(r, 4), "breaches": int(breaches.get((w, d), 0)),
                     "latency_p99_s": wf_latency.get((w, d), {}).get("p99")} for (w, d), r in sorted(within.items())}
    single = {name: (samples.get(name) or [({}, 0.0)])[0][1]
              for name in ("router_routes_revision", "router_reload_failures_total", "router_actors_down")}
    return {"sources": sources, "destinations": destinations, "workflows": workflows,
            "routes_revision": int(single["router_routes_revision"]),
            "reload_failures": int(single["router_reload_failures_total"]),
            "actors_down": int(single["router_actors_down"])}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


def render(v: dict[str, Any], url: str = "") -> str:
    lines = [f"router {url}  routes revision {v['routes_revision']}  reload failures {v['reload_failures']}"
             f"  actors down {v['actors_down']}", ""]
    lines += _table(["source", "acked/s", "acked", "lag", "ack pending", "invalid"],
                    [[n, s["acked_per_s"], s["acked"], s["pending"], s["ack_pending"], s["invalid"]]
                     for n, s in v["sources"].items()])
    for n, s in v["sources"].items():
        if "partition_pending" in s:
            lags = "  ".join(f"p{k} {lag}" for k, lag in enumerate(s["partition_pending"]))
            lines.append(f"{n} lag by partition: {lags}")
    lines.append("")
    lines += _table(["destination", "delivered/s", "delivered", "dup", "p50 s", "p99 s", "breaker", "parked",
                     "replayed", "dead letters"],
                    [[n, d["delivered_per_s"], d["delivered"], d["duplicates"], d["latency_p50_s"], d["latency_p99_s"],
                      d["breaker"], d["parked_backlog"], d["replayed"], d["dead_lettered"]]
                     for n, d in v["destinations"].items()])
    if v["workflows"]:
        lines.append("")
        lines += _table(["workflow (SLO)", "within SLO", "breaches", "p99 s"],
                        [[n, f"{w['within_slo'] * 100:.1f}%", w["breaches"], w["latency_p99_s"]]
                         for n, w in v["workflows"].items()])
    return "\n".join(lines) + "\n"


def run_status(url: str, once: bool = False, as_json: bool = False, interval: float = 2.0) -> int:
    """The CLI's loop; returns the exit code (1 when ``/metrics`` cannot be read)."""
    try:
        earlier, at = parse_scrape(scrape(url)), time.monotonic()
        if once and as_json:
            time.sleep(interval)  # a second scrape, for the rates
        while True:
            if once and not as_json:
                time.sleep(interval)
            samples, now = parse_scrape(scrape(url)), time.monotonic()
            v = view(samples, earlier, now - at)
            if as_json:
                sys.stdout.write(json.dumps(v, indent=2) + "\n")
            else:
                # Clear the screen and redraw from the top left; no curses needed.
                sys.stdout.write(("" if once else "\x1b[H\x1b[2J") + render(v, url))
            sys.stdout.flush()
            if once:
                return 0
            earlier, at = samples, now
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        sys.stderr.write(f"error: cannot read {url}/metrics: {exc}\n")
        return 1
