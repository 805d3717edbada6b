"""The rehearsal scenario file: load shape, rates, fault windows and SLOs (YAML).

    name: holiday-peak
    shape: holiday-peak          # or steady (loadtest/rate_profile.py)
    base_rate: 20                # events/s at baseline; the shape multiplies it (3x, 10x)
    duration_s: 180              # the whole shape, time-compressed
    faults:
      - name: ERP maintenance window
        destination: erp
        start_s: 40
        duration_s: 30
        fault: {status: 503, error_rate: 1.0}
    slo: {p99_ms: 5000, drain_s: 60}

Unknown keys and bad values are rejected with the file, the path of the key and what was
expected, as the router's own config is. A name without a path (``holiday-peak``) means the file
of that name in ``loadtest/scenarios/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec
import yaml

__all__ = ["SCENARIO_DIR", "FaultSpec", "FaultWindow", "Scenario", "ScenarioError", "SLO", "load_scenario",
           "parse_scenario"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Shape = Literal["holiday-peak", "steady"]  # the profiles of rate_profile.py


class ScenarioError(ValueError):
    """A scenario file that cannot be used, with the file and the key at fault."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class FaultSpec(_Base):
    """What the destination emulator does while the window is open (its ``POST /faults/<dest>`` body)."""

    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503  # the failure's HTTP status
    error_rate: Ratio = 0.0  # share of requests answered with `status`
    retry_after: Annotated[float, msgspec.Meta(ge=0)] | None = None  # seconds, sent as `Retry-After`
    latency_ms: Annotated[int, msgspec.Meta(ge=0)] = 0  # added to every request


class FaultWindow(_Base):
    name: str
    destination: str
    start_s: Seconds  # from the start of the load
    duration_s: Annotated[float, msgspec.Meta(gt=0)]
    fault: FaultSpec

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class SLO(_Base):
    """Go / no-go thresholds. Lost and duplicated records must be 0 always; these add to that."""

    p95_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None  # end-to-end, worst destination
    p99_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None
    drain_s: Annotated[float, msgspec.Meta(ge=0)] | None = None  # peak backlog back to baseline within
    max_dead_lettered: Annotated[int, msgspec.Meta(ge=0)] | None = None  # at destinations, summed


class Scenario(_Base):
    name: str
    base_rate: Annotated[float, msgspec.Meta(gt=0)]  # events/s at baseline
    duration_s: Annotated[float, msgspec.Meta(gt=0)]  # of the whole (compressed) shape
    description: str = ""
    shape: Shape = "holiday-peak"
    per_user_rate: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # events/s one locust user publishes
    duplicate_ratio: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.02
    malformed_ratio: Annotated[float, msgspec.Meta(ge=0, le=0.1)] = 0.001
    drain_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 180.0  # after the load, to see everything final
    faults: list[FaultWindow] = []
    slo: SLO = msgspec.field(default_factory=SLO)

    def __post_init__(self) -> None:
        for i, f in enumerate(self.faults):
            if f.end_s > self.duration_s:
                raise ValueError(f"faults[{i}] ({f.name}) ends at {f.end_s:g}s, after the load ends "
                                 f"(duration_s: {self.duration_s:g})")
            for j, g in enumerate(self.faults[:i]):
                if g.destination == f.destination and f.start_s < g.end_s and g.start_s < f.end_s:
                    raise ValueError(f"faults[{i}] ({f.name}) overlaps faults[{j}] ({g.name}) on {f.destination}: "
                                     "one fault per destination at a time")

    def scaled(self, base_rate: float | None = None, duration_s: float | None = None) -> "Scenario":
        """The same scenario at another rate and/or length (fault windows stretch with the run)."""
        k = (duration_s / self.duration_s) if duration_s else 1.0
        faults = [msgspec.structs.replace(f, start_s=f.start_s * k, duration_s=f.duration_s * k) for f in self.faults]
        return msgspec.structs.replace(self, base_rate=base_rate or self.base_rate,
                                       duration_s=duration_s or self.duration_s, faults=faults)


def parse_scenario(raw: object, where: str = "<scenario>", destinations: list[str] | None = None) -> Scenario:
    try:
        sc = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if " - at `$." in msg:
            text, path = msg.rsplit(" - at `$.", 1)
            path = path.rstrip("`")
            if path == "shape":
                text += f"; expected one of: {', '.join(get_args(Shape))}"
            raise ScenarioError(f"{where}: {path}: {text}") from None
        raise ScenarioError(f"{where}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    if destinations is not None:
        for i, f in enumerate(sc.faults):
            if f.destination not in destinations:
                raise ScenarioError(f"{where}: faults[{i}].destination: unknown destination `{f.destination}`; "
                                    f"expected one of: {', '.join(sorted(destinations))}")
    return sc


def load_scenario(name_or_path: str, destinations: list[str] | None = None) -> Scenario:
    path = Path(name_or_path)
    if not path.suffix and len(path.parts) == 1:
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        raise ScenarioError(f"{path}: cannot read it ({exc.strerror}); scenarios shipped: {known}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(raw, str(path), destinations)
