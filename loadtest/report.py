"""The rehearsal's go / no-go report: figures from what was sent and what arrived, SLO checks,
a self-contained HTML page (the chart embedded as a base64 PNG, no external assets) and JSON.

Inputs are what the rehearsal collected (``RehearsalData``); everything here is arithmetic on
them, so the report can be rebuilt and tested without running anything.

Definitions (also printed in the HTML):
- sent: acked publishes (the journal the locust users write), re-sent duplicates and malformed included;
- delivered: keys a destination should get (the route table applied to what was sent) that it received;
- lost: keys it should get, did not receive and that were not dead-lettered for it (must be 0);
- duplicated: receipts beyond the first per key at a destination (must be 0);
- latency: a key's first receipt at the destination minus its first publish (wall clocks);
- backlog: the source consumers' pending + unacked messages, sampled; drained = back to at most
  one second of baseline traffic after its peak.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import msgspec

from router.loadtest.scenario import Scenario
from router.loadtest.rate_profile import make_profile

__all__ = ["RehearsalData", "Sample", "build_report", "render_chart", "write_report"]


class Sample(msgspec.Struct):
    """One look at the running system (every second or so)."""

    t: float  # Unix time
    pending: int  # source consumers: not yet delivered + delivered but unacked
    published: int = 0  # messages in the source streams
    park_backlog: int | None = None  # parked records not yet replayed (router stats)
    breakers: dict[str, str] = {}  # destination -> closed / half_open / open
    received: dict[str, int] = {}  # destination -> records received by the emulator


class RehearsalData(msgspec.Struct):
    scenario: Scenario
    mode: str  # "embedded" or "existing deployment"
    started_at: float  # Unix time the load started
    load_ended_at: float
    finished_at: float
    sent: list[tuple[float, str, bool]]  # (publish time, key, malformed) per acked publish
    expected: dict[str, list[str]]  # destination -> keys it must get
    received: dict[str, dict[str, int]]  # destination -> key -> times received
    receipts: dict[str, dict[str, float]]  # destination -> key -> first receipt time
    dead_lettered: dict[str, list[str]]  # destination -> keys dead-lettered for it
    ingest_dead_letters: int
    samples: list[Sample]
    faults: list[dict[str, Any]]  # AppliedFault as builtins
    router_totals: dict[str, dict[str, int]] = {}  # destination -> parked, replayed, breaker_opened, retries...
    locust: dict[str, Any] = {}  # publish-side figures from locust's --csv
    drained: bool = True  # everything final before the drain timeout


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 1)


def build_report(d: RehearsalData) -> dict[str, Any]:
    sc, t0 = d.scenario, d.started_at
    first_pub: dict[str, float] = {}
    for t, key, malformed in d.sent:
        if key and not malformed and key not in first_pub:
            first_pub[key] = t
    malformed = sum(1 for *_, m in d.sent if m)

    dests: dict[str, Any] = {}
    for dest in sorted(set(d.expected) | set(d.received)):
        expected = set(d.expected.get(dest, ()))
        got = d.received.get(dest, {})
        dlq = set(d.dead_lettered.get(dest, ()))
        lat = sorted(d.receipts.get(dest, {})[k] - first_pub[k] for k in d.receipts.get(dest, {}) if k in first_pub)
        totals = d.router_totals.get(dest, {})
        dests[dest] = {
            "expected": len(expected),
            "delivered": len(expected & set(got)),
            "lost": len(expected - set(got) - dlq),
            "duplicated": sum(c - 1 for c in got.values() if c > 1),
            "unexpected": len(set(got) - expected),  # received but no route sends it there
            "dead_lettered": len(dlq),
            "latency_ms": {"p50": _ms(_pct(lat, 0.50)), "p95": _ms(_pct(lat, 0.95)), "p99": _ms(_pct(lat, 0.99)),
                           "max": _ms(lat[-1] if lat else None)},
            **{k: totals[k] for k in ("parked", "replayed", "breaker_opened", "retries") if k in totals},
        }

    # Backlog: the source consumers' pending messages.
    peak = max(d.samples, key=lambda s: s.pending, default=None)
    threshold = max(10, int(sc.base_rate))
    drained_after = None
    if peak is not None:
        after = [s for s in d.samples if s.t >= peak.t and s.pending <= threshold]
        drained_after = round(after[0].t - peak.t, 1) if after else None
    parked = [s for s in d.samples if s.park_backlog is not None]
    park_peak = max(parked, key=lambda s: s.park_backlog or 0, default=None)
    park_drained_after = None
    if park_peak is not None and park_peak.park_backlog:
        after = [s for s in parked if s.t >= park_peak.t and not s.park_backlog]
        park_drained_after = round(after[0].t - park_peak.t, 1) if after else None

    transitions = []
    last: dict[str, str] = {}
    for s in d.samples:
        for dest, state in s.breakers.items():
            if dest in last and last[dest] != state:
                transitions.append({"t_s": round(s.t - t0, 1), "destination": dest, "from": last[dest], "to": state})
            last[dest] = state

    report: dict[str, Any] = {
        "scenario": {"name": sc.name, "shape": sc.shape, "base_rate": sc.base_rate, "duration_s": sc.duration_s,
                     "duplicate_ratio": sc.duplicate_ratio, "malformed_ratio": sc.malformed_ratio},
        "mode": d.mode,
        "started_at": t0,
        "load_s": round(d.load_ended_at - t0, 1),
        "total_s": round(d.finished_at - t0, 1),
        "drained": d.drained,
        "sent": {"events": len(d.sent), "unique_keys": len(first_pub), "malformed": malformed,
                 "resent_duplicates": len(d.sent) - malformed - len(first_pub),
                 "ingest_dead_letters": d.ingest_dead_letters, **d.locust},
        "destinations": dests,
        "backlog": {"peak": peak.pending if peak else 0, "peak_at_s": round(peak.t - t0, 1) if peak else None,
                    "drain_threshold": threshold, "drained_after_s": drained_after,
                    "park_backlog_peak": park_peak.park_backlog if park_peak else None,
                    "park_backlog_peak_at_s": round(park_peak.t - t0, 1) if park_peak else None,
                    "park_replayed_after_s": park_drained_after},
        "breaker_transitions": transitions,
        "faults": [{"name": f["name"], "destination": f["destination"], "fault": f["fault"],
                    "start_s": round(f["started_at"] - t0, 1),
                    "end_s": round((f["ended_at"] or d.load_ended_at) - t0, 1)} for f in d.faults],
        "timeline": _timeline(d, first_pub),
    }
    report["slo_checks"] = _slo_checks(report, sc)
    report["failed_slos"] = [c["name"] for c in report["slo_checks"] if not c["ok"]]
    report["verdict"] = "go" if not report["failed_slos"] else "no-go"
    return report


def _timeline(d: RehearsalData, first_pub: dict[str, float]) -> dict[str, Any]:
    t0 = d.started_at
    n = int(d.finished_at - t0) + 1
    sent = [0] * n
    for t, *_ in d.sent:
        if 0 <= t - t0 < n:
            sent[int(t - t0)] += 1
    delivered: dict[str, list[int]] = {}
    for dest, rec in d.receipts.items():
        row = delivered[dest] = [0] * n
        for t in rec.values():
            if 0 <= t - t0 < n:
                row[int(t - t0)] += 1
    bucket = 5  # seconds of publish time per latency point
    latency: dict[str, dict[str, list[float | None]]] = {}
    for dest, rec in d.receipts.items():
        by_bucket: dict[int, list[float]] = {}
        for k, t in rec.items():
            if k in first_pub:
                by_bucket.setdefault(int((first_pub[k] - t0) // bucket), []).append(t - first_pub[k])
        rows = {"p50": [], "p99": []}
        for b in range(n // bucket + 1):
            v = sorted(by_bucket.get(b, []))
            rows["p50"].append(_ms(_pct(v, 0.5)))
            rows["p99"].append(_ms(_pct(v, 0.99)))
        latency[dest] = rows
    profile = make_profile(d.scenario.shape, d.scenario.base_rate, d.scenario.duration_s)
    return {
        "seconds": n,
        "target_per_s": [round(profile.rate(i + 0.5), 2) for i in range(n)],
        "sent_per_s": sent,
        "delivered_per_s": delivered,
        "latency_bucket_s": bucket,
        "latency_ms": latency,
        "samples": [{"t_s": round(s.t - t0, 2), "pending": s.pending, "park_backlog": s.park_backlog}
                    for s in d.samples],
    }


def _slo_checks(r: dict[str, Any], sc: Scenario) -> list[dict[str, Any]]:
    dests = r["destinations"]
    checks = [
        {"name": "lost == 0", "threshold": 0, "actual": sum(x["lost"] for x in dests.values())},
        {"name": "duplicated == 0", "threshold": 0, "actual": sum(x["duplicated"] for x in dests.values())},
        {"name": "nothing unexpected delivered", "threshold": 0,
         "actual": sum(x["unexpected"] for x in dests.values())},
        {"name": "every event final before the drain timeout", "threshold": True, "actual": r["drained"]},
    ]
    for q in ("p95", "p99"):
        limit = getattr(sc.slo, f"{q}_ms")
        if limit is not None:
            worst = max((x["latency_ms"][q] or 0 for x in dests.values()), default=0)
            checks.append({"name": f"end-to-end {q} <= {limit:g} ms", "threshold": limit, "actual": worst})
    if sc.slo.drain_s is not None:
        checks.append({"name": f"backlog drained within {sc.slo.drain_s:g} s", "threshold": sc.slo.drain_s,
                       "actual": r["backlog"]["drained_after_s"]})
    if sc.slo.max_dead_lettered is not None:
        checks.append({"name": f"dead-lettered at destinations <= {sc.slo.max_dead_lettered}",
                       "threshold": sc.slo.max_dead_lettered,
                       "actual": sum(x["dead_lettered"] for x in dests.values())})
    for c in checks:
        a, t = c["actual"], c["threshold"]
        c["ok"] = (a is True) if isinstance(t, bool) else (a is not None and a <= t)
    return checks


_COLORS = {"erp": "#1f77b4", "marketplace": "#ff7f0e", "carrier": "#2ca02c"}


def render_chart(r: dict[str, Any]) -> bytes | None:
    """Throughput, backlog and latency over time, fault windows shaded (PNG), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tl = r["timeline"]
    xs = list(range(tl["seconds"]))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11.5, 8.5), sharex=True)
    ax1.plot(xs, tl["target_per_s"], color="#999", ls="--", lw=1, label="target")
    ax1.plot(xs, tl["sent_per_s"], color="#222", lw=1.2, label="published")
    for dest, row in sorted(tl["delivered_per_s"].items()):
        ax1.plot(xs, row, lw=1, color=_COLORS.get(dest), label=f"{dest} delivered")
    ax1.set_ylabel("events / s")
    top = max([1.0, *tl["target_per_s"], *tl["sent_per_s"]]) * 1.6
    burst = max((max(row, default=0), dest) for dest, row in tl["delivered_per_s"].items()) if tl["delivered_per_s"] else (0, "")
    if burst[0] > top:  # a replay after an outage delivers far above the load: clip it, say how high
        ax1.set_ylim(0, top)
        ax1.text(0.99, 0.97, f"{burst[1]} replay peaks at {burst[0]:,}/s (clipped)", transform=ax1.transAxes,
                 ha="right", va="top", fontsize=7)
    ts = [s["t_s"] for s in tl["samples"]]
    ax2.plot(ts, [s["pending"] for s in tl["samples"]], color="#222", label="source consumer pending")
    if any(s["park_backlog"] is not None for s in tl["samples"]):
        ax2.plot(ts, [s["park_backlog"] or 0 for s in tl["samples"]], color="#d62728", label="parked, not replayed")
    for tr in r["breaker_transitions"]:
        if tr["to"] == "open":
            ax2.axvline(tr["t_s"], color=_COLORS.get(tr["destination"], "#555"), ls=":", lw=1)
    ax2.set_ylabel("messages")
    b = tl["latency_bucket_s"]
    for dest, rows in sorted(tl["latency_ms"].items()):
        bx = [i * b + b / 2 for i in range(len(rows["p99"]))]
        ax3.plot(bx, rows["p99"], color=_COLORS.get(dest), lw=1.2, label=f"{dest} p99")
        ax3.plot(bx, rows["p50"], color=_COLORS.get(dest), lw=0.8, ls="--", label=f"{dest} p50")
    ax3.set_yscale("log")
    ax3.set_ylabel("publish → receipt, ms")
    ax3.set_xlabel("seconds since the load started")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for f in r["faults"]:
        for ax in (ax1, ax2, ax3):
            ax.axvspan(f["start_s"], f["end_s"], color=_COLORS.get(f["destination"], "#888"), alpha=0.12, lw=0)
        ax1.text(f["start_s"], 0.97, " " + f["name"], fontsize=7, va="top", rotation=90,
                 transform=ax1.get_xaxis_transform(), color=_COLORS.get(f["destination"], "#444"))
    sc = r["scenario"]
    fig.suptitle(f"rehearsal `{sc['name']}` ({sc['shape']}, base {sc['base_rate']:g}/s): {r['verdict'].upper()}",
                 fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return html.escape(str(v))


def render_html(r: dict[str, Any], png: bytes | None) -> str:
    sc = r["scenario"]
    ok = r["verdict"] == "go"
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{_fmt(c['actual'])}</td>"
        f"<td class={'ok' if c['ok'] else 'bad'}>{'pass' if c['ok'] else 'FAIL'}</td></tr>" for c in r["slo_checks"])
    cols = ["expected", "delivered", "lost", "duplicated", "dead_lettered", "parked", "replayed", "breaker_opened",
            "retries"]
    drows = "".join(
        f"<tr><td>{html.escape(dest)}</td>" + "".join(f"<td>{_fmt(x.get(c))}</td>" for c in cols)
        + "".join(f"<td>{_fmt(x['latency_ms'][q])}</td>" for q in ("p50", "p95", "p99")) + "</tr>"
        for dest, x in r["destinations"].items())
    frows = "".join(f"<tr><td>{html.escape(f['name'])}</td><td>{html.escape(f['destination'])}</td>"
                    f"<td>{f['start_s']:g}-{f['end_s']:g} s</td><td><code>{html.escape(json.dumps(f['fault']))}</code>"
                    f"</td></tr>" for f in r["faults"])
    trows = "".join(f"<tr><td>{t['t_s']:g} s</td><td>{html.escape(t['destination'])}</td>"
                    f"<td>{t['from']} → {t['to']}</td></tr>" for t in r["breaker_transitions"]) or \
        "<tr><td colspan=3>none seen (sampled every second)</td></tr>"
    s, bl = r["sent"], r["backlog"]
    img = (f'<img alt="throughput, backlog and latency over time" src="data:image/png;base64,'
           f'{base64.b64encode(png).decode()}">' if png else "<p>(no chart: matplotlib is not installed)</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Rehearsal {html.escape(sc['name'])}: {r['verdict']}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; max-width: 1000px; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ background: #f4f4f4; }} td {{ text-align: right; }} td:first-child {{ text-align: left; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .bad {{ color: #c62828; font-weight: bold; }}
.verdict {{ font-size: 1.6em; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Peak rehearsal <code>{html.escape(sc['name'])}</code></h1>
<p class="verdict {'ok' if ok else 'bad'}">{'GO' if ok else 'NO-GO: ' + html.escape(', '.join(r['failed_slos']))}</p>
<p>{html.escape(sc['shape'])} shape, base rate {sc['base_rate']:g} events/s, {sc['duration_s']:g} s of load
({r['mode']}); everything final after {r['total_s']:g} s.
Sent {_fmt(s['events'])} events: {_fmt(s['unique_keys'])} unique keys, {_fmt(s['resent_duplicates'])} re-sent with
the same key, {_fmt(s['malformed'])} malformed ({_fmt(s['ingest_dead_letters'])} dead-lettered at ingest).</p>
<h2>SLOs</h2><table><tr><th>check</th><th>actual</th><th></th></tr>{rows}</table>
<h2>Per destination</h2>
<table><tr><th>destination</th>{''.join(f'<th>{c.replace("_", " ")}</th>' for c in cols)}
<th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>{drows}</table>
<p>Peak backlog (source consumers' pending) {_fmt(bl['peak'])} at {_fmt(bl['peak_at_s'])} s, back to
≤ {bl['drain_threshold']} after {_fmt(bl['drained_after_s'])} s; peak of parked records not yet replayed
{_fmt(bl['park_backlog_peak'])} at {_fmt(bl['park_backlog_peak_at_s'])} s, all replayed after
{_fmt(bl['park_replayed_after_s'])} s.</p>
{img}
<h2>Fault windows</h2><table><tr><th>fault</th><th>destination</th><th>when</th><th>emulator fault</th></tr>
{frows}</table>
<h2>Breaker transitions</h2><table><tr><th>at</th><th>destination</th><th>state</th></tr>{trows}</table>
<h2>Definitions</h2><pre>{html.escape(__doc__.split("Definitions (also printed in the HTML):", 1)[1].strip())}</pre>
</body></html>
"""


def write_report(r: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(r, indent=1))
    png = render_chart(r)
    if png:
        paths["png"] = out_dir / "rehearsal.png"
        paths["png"].write_bytes(png)
    paths["html"].write_text(render_html(r, png))
    return paths
