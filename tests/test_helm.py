"""The chart in helm/: its values, its templates and what it renders.

Without the helm binary these still check that values.yaml and every example validate against
values.schema.json, that each example gives a router config the router accepts, that the
templates use only values that exist, and that the image, the chart and the installed Ray agree
on the Ray version. With helm on PATH, `helm lint` and `helm template` run too, and every
rendered manifest is validated offline against the Kubernetes schemas (kubernetes-validate) and
the RayCluster / ServiceMonitor schemas shipped in helm/crds-schemas/.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from router.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): json.loads((CHART / "crds-schemas" / "raycluster.json").read_text()),
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        json.loads((CHART / "crds-schemas" / "servicemonitor.json").read_text()),
}
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the docs ask for


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def helm_merge(base: dict, override: dict) -> dict:
    """Values the way Helm coalesces them: maps merge key by key, anything else (lists
    included) replaces, and a null removes the key."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = helm_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def schema_errors(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(values)]


def router_config(values: dict) -> dict:
    """The router.yaml the chart writes (templates/_helpers.tpl, "peak-router.config")."""
    cfg = copy.deepcopy(values["router"]["config"])
    cfg["routes"] = "routes.yaml"
    cfg["metrics"] = {"host": "0.0.0.0", "port": values["metrics"]["port"]}
    ray_cfg = {"address": values["router"]["rayAddress"] or "ray://release-peak-router-ray-head-svc:10001",
               "namespace": values["router"]["rayNamespace"]}
    if (cfg.get("ray") or {}).get("placement"):
        ray_cfg["placement"] = cfg["ray"]["placement"]
    cfg["ray"] = ray_cfg
    nats = dict(cfg.get("nats") or {})
    if values["nats"]["enabled"]:
        nats["url"] = "nats://release-nats:4222"
    if values["natsCredentials"]["existingSecret"]:
        nats["credentials"] = f"/etc/router/nats/{values['natsCredentials']['key']}"
    cfg["nats"] = nats
    return cfg


def test_values_yaml_validates_against_the_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert schema_errors(_load(CHART / "values.yaml")) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_and_gives_a_config_the_router_accepts(example, tmp_path):
    values = helm_merge(_load(CHART / "values.yaml"), _load(example))
    assert schema_errors(values) == []
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump({"routes": values["router"]["routes"]}))
    cfg = parse_config(router_config(values), f"{example.name} (router.yaml)", tmp_path)
    assert cfg.metrics.host == "0.0.0.0" and cfg.ray.address.startswith("ray://")


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"external-nats.yaml", "self-contained.yaml", "black-friday.yaml"}


@pytest.mark.parametrize("override, expected", [
    ({"driver": {"replicas": 2}}, "Additional properties are not allowed ('replicas'"),
    ({"ray": {"workers": {"minReplicas": -1}}}, "-1 is less than the minimum of 0"),
    ({"router": {"config": {"metrics": {"port": 1}}}}, "router.config: "),
    ({"router": {"config": {"ray": {"address": "auto"}}}}, "router.config.ray: Additional properties are not allowed"),
    ({"router": {"routes": []}}, "router.routes: [] should be non-empty"),
    ({"ray": {"head": {"resources": {"limits": {"cpu": "lots"}}}}}, "ray.head.resources.limits"),
    ({"secrets": {"create": {"not-a-variable": "x"}}}, "secrets.create: 'not-a-variable' does not match"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy: 'Sometimes' is not one of"),
])
def test_the_schema_refuses_bad_values(override, expected):
    errors = schema_errors(helm_merge(_load(CHART / "values.yaml"), override))
    assert any(expected in e for e in errors), errors


def _paths(tree: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = {prefix}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out |= _paths(v, prefix + (str(k),))
    return out


def test_templates_use_only_values_that_exist():
    """A template that reads `.Values.x.y` where values.yaml has no `x.y` renders an empty
    string without complaint: the chart drifts silently. Every path must exist."""
    known = _paths(_load(CHART / "values.yaml"))
    used: dict[tuple[str, ...], str] = {}
    for tpl in sorted((CHART / "templates").glob("*")):
        for m in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", tpl.read_text()):
            used.setdefault(tuple(m.group(1).lstrip(".").split(".")), tpl.name)
    assert len(used) > 30  # the regex still finds the references
    missing = {".".join(p): where for p, where in used.items() if p not in known}
    assert missing == {}, f"templates read values that values.yaml does not define: {missing}"


def test_template_blocks_are_balanced():
    """Without helm to parse them: every if / with / range / define has its end, and no
    action is left unclosed (the mistakes that make `helm template` fail outright)."""
    for tpl in sorted((CHART / "templates").glob("*")):
        text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", tpl.read_text(), flags=re.S)  # comments
        assert text.count("{{") == text.count("}}"), f"{tpl.name}: unbalanced {{{{ }}}}"
        depth = 0
        for m in re.finditer(r"\{\{-?\s*(if|with|range|define|end)\b", text):
            depth += -1 if m.group(1) == "end" else 1
            assert depth >= 0, f"{tpl.name}: `end` without an opening block near offset {m.start()}"
        assert depth == 0, f"{tpl.name}: {depth} block(s) without `end`"


def test_the_image_the_chart_and_the_installed_ray_agree():
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_ray = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    chart_ray = _load(CHART / "values.yaml")["ray"]["version"]
    assert image_ray == chart_ray == ray.__version__, (
        f"Dockerfile RAY_VERSION {image_ray}, helm/values.yaml ray.version {chart_ray}, installed Ray "
        f"{ray.__version__}: the driver and the cluster must run one Ray (Ray Client refuses a mismatch)")
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}$", dockerfile, re.M)
    # The driver's working directory goes onto the cluster's sys.path (Ray Client): it must not
    # hold the sources, whose codecs/ would shadow the standard library there.
    assert re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M)[-1] == "/home/ray"
    assert "rm -rf /tmp/peak-router" in dockerfile


# -- rendered manifests -------------------------------------------------------------------------

def validate_manifest(doc: dict) -> None:
    """One rendered object against its schema: the shipped CRD subset for RayCluster and
    ServiceMonitor (their pod templates against core/v1), Kubernetes' own for the rest."""
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
        if doc["kind"] == "RayCluster":
            spec = doc["spec"]
            for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
                kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                              "metadata": {"name": doc["metadata"]["name"]},
                                              "template": template}, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


RAYCLUSTER_SAMPLE = {
    "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "router-ray"},
    "spec": {
        "rayVersion": "2.60.0", "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 120},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [
            {"name": "ray-head", "image": "peak-router:0.1.0",
             "resources": {"limits": {"cpu": "1", "memory": "3Gi"}}}]}}},
        "workerGroupSpecs": [{"groupName": "router", "replicas": 2, "minReplicas": 2, "maxReplicas": 10,
                              "rayStartParams": {}, "template": {"spec": {"containers": [
                                  {"name": "ray-worker", "image": "peak-router:0.1.0"}]}}}],
    },
}


def test_the_manifest_validator_accepts_a_good_raycluster_and_refuses_bad_objects():
    """The validation the helm test relies on, shown to pass and to fail without helm."""
    import kubernetes_validate

    validate_manifest(RAYCLUSTER_SAMPLE)
    bad_params = copy.deepcopy(RAYCLUSTER_SAMPLE)
    bad_params["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # KubeRay takes strings
    with pytest.raises(jsonschema.ValidationError, match="0 is not of type 'string'"):
        validate_manifest(bad_params)
    bad_pod = copy.deepcopy(RAYCLUSTER_SAMPLE)
    bad_pod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        validate_manifest(bad_pod)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                           "spec": {"replicas": "one", "selector": {}, "template": {}}})


def _helm(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["helm", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def chart_copy(tmp_path_factory) -> Path:
    """The chart, ready to render offline: the NATS dependency built if the repository can be
    reached, else dropped (the examples that enable it are then rendered with it off)."""
    if shutil.which("helm") is None:
        pytest.skip("helm is not on PATH: `helm lint` and the rendered manifests are not checked here "
                    "(the values, schema and template references are)")
    chart = tmp_path_factory.mktemp("chart") / "peak-router"
    shutil.copytree(CHART, chart)
    built = subprocess.run(["helm", "dependency", "build", str(chart)], capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        meta = _load(chart / "Chart.yaml")
        meta.pop("dependencies", None)
        (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        chart.joinpath(".offline").write_text(built.stderr)
    return chart


@pytest.mark.parametrize("example", [None, *EXAMPLES], ids=["defaults", *[p.name for p in EXAMPLES]])
def test_helm_lint_and_rendered_manifests_validate(chart_copy, example):
    args = ["-f", str(example)] if example else []
    if chart_copy.joinpath(".offline").exists():
        args += ["--set", "nats.enabled=false"]
    _helm("lint", "--strict", str(chart_copy), *args, cwd=chart_copy)
    rendered = _helm("template", "release", str(chart_copy), *args, cwd=chart_copy)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Deployment", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        validate_manifest(doc)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "router.yaml" in d["data"])
    workdir = chart_copy / "rendered"
    workdir.mkdir(exist_ok=True)
    (workdir / "routes.yaml").write_text(config["data"]["routes.yaml"])
    cfg = parse_config(yaml.safe_load(config["data"]["router.yaml"]), "router.yaml", workdir)
    driver = next(d for d in docs if d["kind"] == "Deployment")
    pod = driver["spec"]["template"]["spec"]
    drain = int(pod["containers"][0]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert cfg.metrics.host == "0.0.0.0"


def test_helm_refuses_a_grace_period_shorter_than_the_drain(chart_copy):
    proc = subprocess.run(["helm", "template", "release", str(chart_copy), "--set", "nats.enabled=false",
                           "--set", "router.drainTimeoutSeconds=120"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "must be longer than router.drainTimeoutSeconds" in proc.stderr
