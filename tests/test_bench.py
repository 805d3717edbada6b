"""A small `router bench` run, so the benchmark keeps working. Figures are printed, never asserted
against a time: speed is the benchmark's business, not a test's."""

import json
import subprocess
import sys


def test_small_benchmark_runs_and_writes_its_results(tmp_path):
    out = tmp_path / "bench"
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "bench", "--events", "3000", "--backlog", "4000",
                          "--latency-seconds", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    print(res.stdout[-3000:])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads((out / "bench.json").read_text())
    for key in ("a_ceiling_msgs_per_s", "b_plain_msgs_per_s", "c_router_nats_msgs_per_s", "c_router_http_msgs_per_s",
                "backlog_drain_msgs_per_s"):
        assert r[key] > 0, key
    assert r["latency_at_half_load"]["measured"] > 0
    assert r["d_ordering_msgs_per_s"]["off"] > 0 and r["d_ordering_msgs_per_s"]["on"] > 0
    assert 0 < r["dedup_index"]["bytes_per_key"] < 64
    # Ray's process titles still tell the actors apart (a change there would charge them to "ray other")
    cpu = r["cpu_by_role"]["c_router_nats"]["cpu_s"]
    assert cpu["ingest_actors"] > 0 and cpu["sink_actors"] > 0, cpu
    assert r["pss_by_role_at_peak_mib"]["router_nats_run"].get("sink_actors", 0) > 0
    assert r["peak_rss_mib"]["router_nats_run"] >= r["peak_pss_mib"]["router_nats_run"] > 0 and r["machine"]["cpus"] >= 1
    # Ray and as many idle actors as the router runs, measured in the run: less than the router's
    # peak, whose actors import the router (the short runs here may be sampled once or twice)
    base = r["ray_idle_baseline_mib"]
    assert base["actors"] == 4 and 0 < base["pss_mib"] < r["peak_pss_mib"]["backlog_run"], base
    assert r["above_ray_baseline_mib"]["backlog_run"]["pss"] > 0
    assert (out / "bench.png").stat().st_size > 10_000
    assert "(c) router, 3 NATS destinations" in res.stdout
