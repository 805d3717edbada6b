import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, config_schema, load_config, routes_schema
from router.routes import path_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "router.example.yaml"


def write_config(tmp_path, mutate=None, routes_text=None):
    raw = yaml.safe_load(EXAMPLE.read_text())
    if routes_text is not None:
        (tmp_path / "routes.yaml").write_text(routes_text)
        raw["routes"] = "routes.yaml"
    else:
        raw["routes"] = path_of("default.yaml")
    if mutate:
        mutate(raw)
    p = tmp_path / "router.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def error_of(path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value


def test_example_config_loads():
    cfg = load_config(EXAMPLE)
    assert set(cfg.destinations) == {"erp", "marketplace", "carrier"}
    assert cfg.destinations["erp"].batch.linger == pytest.approx(0.02)
    assert cfg.dedup.window == 24 * 3600
    assert len(cfg.route_list) == 8


def test_unknown_key_names_file_and_path(tmp_path):
    p = write_config(tmp_path, lambda r: r["destinations"]["erp"]["batch"].update(max_recs=5))
    e = error_of(p)
    assert e.file == str(p) and e.path == "destinations.erp.batch"
    assert "unknown field `max_recs`" in str(e)


def test_bad_value_says_what_was_expected(tmp_path):
    p = write_config(tmp_path, lambda r: r["destinations"]["carrier"]["batch"].update(max_records=0))
    e = error_of(p)
    assert e.path == "destinations.carrier.batch.max_records" and "Expected `int` >= 1" in str(e)


def test_bad_duration(tmp_path):
    p = write_config(tmp_path, lambda r: r["destinations"]["erp"].update(timeout="soon"))
    e = error_of(p)
    assert e.path == "destinations.erp.timeout" and "duration" in str(e)


def test_http_destination_needs_url(tmp_path):
    p = write_config(tmp_path, lambda r: r["destinations"]["erp"].pop("url"))
    e = error_of(p)
    assert e.path == "destinations.erp" and "missing required field `url`" in str(e)


def test_unknown_destination_kind_lists_the_kinds(tmp_path):
    p = write_config(tmp_path, lambda r: r["destinations"]["erp"].update(kind="ftp"))
    e = error_of(p)
    assert e.path == "destinations.erp.kind" and "http, nats" in str(e)


def test_missing_required_section(tmp_path):
    p = write_config(tmp_path, lambda r: r.pop("sources"))
    assert "missing required field `sources`" in str(error_of(p))


def test_route_to_unknown_destination_names_the_routes_file(tmp_path):
    p = write_config(tmp_path, routes_text="routes:\n  - {name: r1, destinations: [erp, wms]}\n")
    e = error_of(p)
    assert e.file == str(tmp_path / "routes.yaml") and e.path == "routes[0].destinations[1]"
    assert "unknown destination `wms`" in str(e) and "carrier, erp, marketplace" in str(e)


def test_predicate_error_names_the_field(tmp_path):
    p = write_config(tmp_path, routes_text=(
        "routes:\n  - name: r1\n    destinations: [erp]\n    match:\n      where:\n        data.total: {greater: 5}\n"))
    e = error_of(p)
    assert e.path == "routes[0].match.where.data.total" and "unknown field `greater`" in str(e)


def test_encoder_family_mismatch(tmp_path):
    p = write_config(tmp_path, routes_text=(
        "routes:\n  - name: r1\n    destinations: [erp]\n    encoder: erp_sales_order\n"
        "    match: {types: [inventory.adjusted]}\n"))
    e = error_of(p)
    assert e.path == "routes[0].match.types[0]" and "cannot encode `inventory.adjusted`" in str(e)


def test_yaml_syntax_error_has_line(tmp_path):
    p = tmp_path / "router.yaml"
    p.write_text("sources: [\n  nats: {")
    assert "not valid YAML: line" in str(error_of(p))


def test_missing_file():
    assert "file not found" in str(error_of("/nonexistent/router.yaml"))


def test_cli_check_and_run_report_config_errors(tmp_path):
    p = write_config(tmp_path, lambda r: r["sources"][0].update(fetch_batch="many"))
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "run", "-c", str(p)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"{p}: sources[0].fetch_batch: Expected `int`" in res.stderr
    # `check` reports every problem with its line, and exits 1 (2 is for a config it cannot read).
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "check", "-c", str(p)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(rf"error: {re.escape(str(p))}:\d+: sources\[0\]\.fetch_batch: Expected `int`", res.stdout)
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "check", "-c", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "file not found" in res.stderr


def test_cli_check_ok():
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "check", "-c", str(EXAMPLE)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ok (4 sources, 3 destinations, 8 routes)" in res.stdout


def test_shipped_json_schemas_are_current():
    assert json.loads(Path(path_of("router.schema.json")).read_text()) == config_schema()
    assert json.loads(Path(path_of("routes.schema.json")).read_text()) == routes_schema()
