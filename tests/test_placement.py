"""Actor placement from `ray.placement`: what each kind of actor reserves and how it spreads."""

from __future__ import annotations

import pytest

from router.config import ConfigError, parse_config
from router.control.actor_env import ACTOR_CPUS_ENV, actor_options
from router.control.demo import demo_config_dict


def _cfg(placement=None):
    raw = demo_config_dict("nats://x:4222", "http://x")
    if placement is not None:
        raw["ray"] = {"address": "head:6379", "placement": placement}
    return parse_config(raw, "<t>")


def test_default_reserves_nothing_and_spreads():
    cfg = _cfg()
    assert actor_options(cfg, {}, kind="ingest") == {"scheduling_strategy": "SPREAD"}
    assert actor_options(cfg, {ACTOR_CPUS_ENV: "0.5"}, kind="sink") == {"num_cpus": 0.5, "scheduling_strategy": "SPREAD"}
    assert actor_options(cfg, {}) == {}  # no kind: as before (secrets and the CPU knob only)


def test_config_placement_per_kind_wins_over_the_cpu_knob():
    cfg = _cfg({"ingest": {"num_cpus": 1, "memory": "1GiB"},
                "sink": {"num_cpus": 0.25, "resources": {"router-node": 0.1}, "spread": False}})
    assert actor_options(cfg, {ACTOR_CPUS_ENV: "2"}, kind="ingest") == {
        "num_cpus": 1.0, "memory": 1024 ** 3, "scheduling_strategy": "SPREAD"}
    assert actor_options(cfg, {ACTOR_CPUS_ENV: "2"}, kind="sink") == {
        "num_cpus": 0.25, "resources": {"router-node": 0.1}}


@pytest.mark.parametrize("placement, path", [
    ({"ingest": {"num_cpus": -1}}, "ray.placement.ingest.num_cpus"),
    ({"sink": {"cpus": 1}}, "ray.placement.sink"),
    ({"sink": {"resources": {"gpu-node": 0}}}, "ray.placement.sink.resources"),
])
def test_bad_placement_is_refused_with_its_path(placement, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        _cfg(placement)
