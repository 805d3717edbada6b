"""The config contract (one YAML file) as msgspec Structs.

Every field is documented where it is declared. Unknown keys and bad values are rejected with
the file, the path of the key and what was expected (``ConfigError``); ``router schema`` prints
the JSON Schema generated from these types.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from router.config_base import (AuthConfig, Base, BatchConfig, BufferConfig, ByteSize, CircuitBreakerConfig,
                                DestinationBase, Duration, Name, RateLimitConfig, RetryConfig, Subject, dec_hook,
                                schema_hook)
from router.sinks import SINK_KINDS, DestinationConfig
from router.slo import parse_slos

# A destination's settings: one Struct per kind (``router/sinks/``), told apart by `kind`.
Destination = DestinationConfig

__all__ = [
    "AuthConfig",
    "BatchConfig",
    "BufferConfig",
    "ByteSize",
    "Config",
    "ConfigError",
    "DeadLetterConfig",
    "CircuitBreakerConfig",
    "DedupConfig",
    "Destination",
    "DestinationBase",
    "Duration",
    "RateLimitConfig",
    "RetryConfig",
    "Route",
    "Source",
    "config_schema",
    "load_config",
    "parse_config",
    "parse_section",
    "read_yaml_text",
    "routes_schema",
]


class ConfigError(ValueError):
    """A config that cannot run: says the file, the key path and what was expected."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = file, path, message
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# nats

class TLSConfig(Base):
    ca_file: str | None = None  # CA bundle that signs the server certificate
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None  # client key (mutual TLS)


class NatsConfig(Base):
    url: str | list[str] = "nats://127.0.0.1:4222"  # one URL or a list of cluster seed URLs
    credentials: str | None = None  # path to a .creds file (JWT + nkey)
    user_env: str | None = None  # name of the environment variable holding the user name
    password_env: str | None = None  # name of the environment variable holding the password
    token_env: str | None = None  # name of the environment variable holding an auth token
    tls: TLSConfig | None = None
    connect_timeout: Duration = 5.0


# ---------------------------------------------------------------------------------------------
# sources

class Source(Base):
    name: Name  # used in metrics, dead-letter subjects and logs
    stream: Name  # the JetStream stream to consume
    subjects: Annotated[list[Subject], msgspec.Meta(min_length=1)]  # subjects the stream captures / the consumer filters
    durable: Name  # durable pull-consumer name: the router resumes from it after a restart
    create_stream: bool = True  # create the stream if it does not exist (file storage, limits retention)
    fetch_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500  # messages per pull request
    fetch_wait: Duration = 0.05  # how long a pull waits to fill its batch while the actor has batches in hand (idle, it takes what is there)
    max_inflight_batches: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8  # fetched batches not yet acked
    ingest_actors: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # ingest actors sharing the durable consumer
    ack_wait: Duration = 30.0  # the consumer's ack wait; in-flight work sends progress acks before it
    # Ingest autoscaling by consumer lag: up to this many ingest actors (none: fixed at `ingest_actors`)
    max_ingest_actors: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    scale_up_pending: Annotated[int, msgspec.Meta(ge=1)] = 20_000  # lag (messages pending) per actor that adds one
    scale_down_pending: Annotated[int, msgspec.Meta(ge=0)] = 1_000  # lag per actor below which one is removed
    scale_hold: Duration = 15.0  # how long the lag must stay past a threshold before a change
    redelivery_delay: Duration = 2.0  # NAK delay when a destination could not take a record yet
    # `watermark` needs one reader per consumer (README "Acks by watermark"); an existing consumer is
    # created again from its ack floor when this changes
    ack: Literal["message", "watermark"] = "message"  # one ack per message, or one per batch that acks all before it
    # Several ingest actors that keep each key's order (README "Several ingest actors, in order"):
    partitions: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # one consumer `<durable>-p<k>` and ingest actor each
    partition_token: Annotated[int, msgspec.Meta(ge=1)] | None = None  # subject token (1-based, a `*`) carrying the key

    @property
    def consumers(self) -> list[str]:
        """The durable consumers the router reads: `durable`, or `<durable>-p<k>` for each partition k."""
        return [self.durable] if self.partitions == 1 else [f"{self.durable}-p{k}" for k in range(self.partitions)]

    def partition_problem(self) -> tuple[str, str] | None:
        """(key, what is wrong) with the partition settings, or None."""
        if self.partitions == 1:
            if self.partition_token is not None:
                return "partition_token", "takes effect only with partitions > 1; set partitions or remove it"
            return None
        if self.partition_token is None:
            return "partition_token", (f"partitions: {self.partitions} needs the subject token that carries the key, "
                                       "e.g. partition_token: 3 for `retail.orders.<order_id>`")
        if len(self.subjects) != 1:
            return "subjects", (f"a partitioned source takes one subject pattern (the stream's one subject "
                                f"transform), got {len(self.subjects)}")
        tokens = self.subjects[0].split(".")
        token = tokens[self.partition_token - 1] if self.partition_token <= len(tokens) else None
        if token != "*":
            return "partition_token", (f"token {self.partition_token} of `{self.subjects[0]}` is "
                                       f"{f'`{token}`' if token else 'past its end'}; the key's token must be a `*` "
                                       "there, e.g. `retail.orders.*` with partition_token: 3")
        if self.ingest_actors not in (1, self.partitions):
            return "ingest_actors", (f"{self.ingest_actors}, but partitions: {self.partitions} runs one ingest actor "
                                     f"per partition; set ingest_actors: {self.partitions} or leave it out")
        if self.max_ingest_actors is not None:
            return "max_ingest_actors", ("a partitioned source runs one ingest actor per partition, never more or "
                                         "fewer (the partition count is fixed in the stream's subject transform); "
                                         "remove max_ingest_actors")
        return None


# ---------------------------------------------------------------------------------------------
# destinations

# ---------------------------------------------------------------------------------------------
# routes

class Predicate(Base):
    """A test on one field of the event (``data.total``, ``source``, ``type``). All given must hold."""

    eq: Any = msgspec.UNSET
    ne: Any = msgspec.UNSET
    in_: list[Any] | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="in")
    not_in: list[Any] | msgspec.UnsetType = msgspec.UNSET
    gt: float | msgspec.UnsetType = msgspec.UNSET
    gte: float | msgspec.UnsetType = msgspec.UNSET
    lt: float | msgspec.UnsetType = msgspec.UNSET
    lte: float | msgspec.UnsetType = msgspec.UNSET
    exists: bool | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if not any(getattr(self, f) is not msgspec.UNSET for f in self.__struct_fields__):
            raise ValueError("a predicate needs at least one of eq, ne, in, not_in, gt, gte, lt, lte, exists")


class Match(Base):
    subjects: list[Subject] = []  # NATS wildcards (`*`, `>`); empty: any subject
    types: list[str] = []  # event types; `order.*` matches one family; empty: any type
    where: dict[str, Predicate] = {}  # field path -> predicate, e.g. `data.channel: {in: [web, pos]}`


class Route(Base):
    name: Name
    destinations: Annotated[list[Name], msgspec.Meta(min_length=1)]
    match: Match = Match()
    encoder: str = "canonical"  # see `router encoders`
    # Field paths whose values together name a sequence (`[data.order_id]`, `[data.sku, data.location_id]`):
    # records with equal values reach each destination in source order. Empty: no order promised.
    ordering_key: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]] = []
    # The lane its records wait in at each destination: while a destination cannot keep up, high goes
    # before normal before low (each lane keeps a share, see `lanes` in a destination), and low is parked first.
    priority: Literal["high", "normal", "low"] = "normal"


class RoutesFile(Base):
    routes: Annotated[list[Route], msgspec.Meta(min_length=1)]


# ---------------------------------------------------------------------------------------------
# the rest

class DedupConfig(Base):
    window: Duration = 24 * 3600  # how long a delivered (key, destination) is remembered
    max_keys_per_shard: Annotated[int, msgspec.Meta(ge=1000)] = 5_000_000  # memory bound; oldest go first
    stream: Name = "ROUTER_DEDUP"  # JetStream stream that makes the dedup state durable


class DeadLetterConfig(Base):
    stream: Name = "ROUTER_DLQ"
    subject_prefix: Subject = "router.dlq"  # `<prefix>.ingest.<source>` and `<prefix>.<destination>`
    max_age: Duration = 14 * 86400


class ParkingConfig(Base):
    """Where a destination's records wait, durably, while it cannot take them."""

    stream: Name = "ROUTER_PARKED"
    subject_prefix: Subject = "router.parked"  # `<prefix>.<destination>.<shard>`
    max_age: Duration = 7 * 86400


class MetricsConfig(Base):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464  # 0 turns the endpoint off
    host: str = "127.0.0.1"


class LiveConfigSettings(Base):
    """Where revisions of the live config (routes and destination settings) are kept and watched."""

    bucket: Name = "ROUTER_LIVE"  # NATS KV bucket
    key: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_=.-]+$")] = "default"  # one key per router deployment


class ActorPlacement(Base):
    """What one actor reserves on its node, and how actors of one kind are spread over nodes."""

    num_cpus: Annotated[float, msgspec.Meta(ge=0)] | None = None  # none: `ROUTER_ACTOR_CPUS`, else 0
    memory: ByteSize | None = None  # reserved memory; Ray places the actor only where it fits
    resources: dict[str, Annotated[float, msgspec.Meta(gt=0)]] = {}  # custom node resources, e.g. `{ingest-node: 0.1}`
    spread: bool = True  # Ray's SPREAD strategy: the actors of one kind land on different nodes where they can


class PlacementConfig(Base):
    ingest: ActorPlacement = ActorPlacement()  # each ingest actor
    sink: ActorPlacement = ActorPlacement()  # each sink actor (one per destination shard)


class RayConfig(Base):
    address: str | None = None  # an existing cluster (`auto`, `ray://...`); none: start a local Ray
    namespace: Name = "router"
    object_store_memory: ByteSize | None = None  # local Ray only
    placement: PlacementConfig = PlacementConfig()  # what the actors reserve and how they spread over nodes


class Config(Base):
    sources: Annotated[list[Source], msgspec.Meta(min_length=1)]
    destinations: Annotated[dict[Name, DestinationConfig], msgspec.Meta(min_length=1)]
    routes: list[Route] | str  # the routes, or a path (relative to this file) to a routes YAML file
    on_unrouted: Literal["dead_letter", "drop"] = "dead_letter"  # an event no route matches
    nats: NatsConfig = NatsConfig()
    dedup: DedupConfig = DedupConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    parking: ParkingConfig = ParkingConfig()
    metrics: MetricsConfig = MetricsConfig()
    ray: RayConfig = RayConfig()
    live: LiveConfigSettings = LiveConfigSettings()
    # Per-workflow latency SLOs, `"<event type pattern> -> <destination>": <duration>` (router/slo.py).
    slo: dict[str, Duration] = {}

    @property
    def route_list(self) -> list[Route]:
        assert isinstance(self.routes, list), "routes are resolved by load_config"
        return self.routes


# ---------------------------------------------------------------------------------------------
# loading

def _convert(obj: Any, tp: Any, file: str, prefix: str) -> Any:
    try:
        return msgspec.convert(obj, tp, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = re.search(r" - at `\$(.*)`$", msg)
        path = prefix
        if m:
            msg = msg[: m.start()]
            path = prefix + m.group(1)
        if path.startswith("destinations.") and path.endswith(".kind") and msg.startswith("Invalid value"):
            msg += f"; expected a destination kind: {', '.join(sorted(SINK_KINDS))}"
        raise ConfigError(file, path.lstrip(".") or "(top level)", msg) from None


def _read_yaml(path: Path) -> Any:
    return read_yaml_text(path)[0]


def read_yaml_text(path: Path) -> tuple[Any, str]:
    """(the YAML document, the file's text); ``ConfigError`` naming the file when it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), "", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}") from None


def _parse_routes(raw: Any, file: str, prefix: str) -> list[Route]:
    if not isinstance(raw, list):
        raise ConfigError(file, prefix, f"Expected `array` of routes, got `{type(raw).__name__}`")
    # Entry by entry, so an error inside a `where` mapping names its field path.
    for i, r in enumerate(raw):
        match = r.get("match") if isinstance(r, dict) else None
        if isinstance(match, dict) and isinstance(match.get("where"), dict):
            for field, pred in r["match"]["where"].items():
                _convert(pred, Predicate, file, f"{prefix}[{i}].match.where.{field}")
    return _convert(raw, list[Route], file, prefix)


def parse_config(raw: Any, file: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config already read into Python objects; resolves a routes file path."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "", f"Expected a mapping at the top level, got `{type(raw).__name__}`")
    raw = dict(raw)
    for name, dest in (raw.get("destinations") or {}).items() if isinstance(raw.get("destinations"), dict) else ():
        _convert(dest, Destination, file, f"destinations.{name}")
    routes_raw = raw.get("routes")
    routes_file = file
    if isinstance(routes_raw, str):
        rpath = Path(routes_raw)
        if not rpath.is_absolute():
            rpath = (base_dir or Path.cwd()) / rpath
        routes_file = str(rpath)
        doc = _read_yaml(rpath)
        if not isinstance(doc, dict):
            raise ConfigError(routes_file, "", "Expected a mapping with a `routes` list")
        extra = sorted(set(doc) - {"routes"})
        if extra:
            raise ConfigError(routes_file, extra[0], "unknown key: a routes file holds only `routes`")
        routes = _parse_routes(doc.get("routes"), routes_file, "routes")
        raw["routes"] = [msgspec.to_builtins(r) for r in routes]
    elif routes_raw is not None:
        _parse_routes(routes_raw, file, "routes")
    cfg: Config = _convert(raw, Config, file, "")
    check_references(cfg, file, routes_file)
    parse_slos(cfg.slo, list(cfg.destinations), lambda path, msg: ConfigError(file, path, msg))
    return cfg


def check_references(cfg: Config, file: str, routes_file: str) -> None:
    """Routes name existing destinations and fitting encoders; sources are unique. Raises ``ConfigError``."""
    from router.codecs import ENCODERS  # late: codecs is a sibling package

    known = sorted(cfg.destinations)
    seen_routes: set[str] = set()
    for i, route in enumerate(cfg.route_list):
        if route.name in seen_routes:
            raise ConfigError(routes_file, f"routes[{i}].name", f"duplicate route name `{route.name}`")
        seen_routes.add(route.name)
        for j, dest in enumerate(route.destinations):
            if dest not in cfg.destinations:
                raise ConfigError(routes_file, f"routes[{i}].destinations[{j}]",
                                  f"unknown destination `{dest}`; expected one of: {', '.join(known)}")
        enc = ENCODERS.get(route.encoder)
        if enc is None:
            raise ConfigError(routes_file, f"routes[{i}].encoder",
                              f"unknown encoder `{route.encoder}`; expected one of: {', '.join(sorted(ENCODERS))}")
        if enc.families is not None:
            if not route.match.types:
                raise ConfigError(routes_file, f"routes[{i}].match.types",
                                  f"encoder `{enc.name}` only encodes {sorted(enc.families)} events: "
                                  "list the event types this route takes")
            for k, t in enumerate(route.match.types):
                if t.split(".", 1)[0] not in enc.families:
                    raise ConfigError(routes_file, f"routes[{i}].match.types[{k}]",
                                      f"encoder `{enc.name}` cannot encode `{t}`; it takes {sorted(enc.families)} events")
    _check_sequence_lanes(cfg, routes_file)
    names, durables = set(), set()
    for i, src in enumerate(cfg.sources):
        if src.name in names:
            raise ConfigError(file, f"sources[{i}].name", f"duplicate source name `{src.name}`")
        for consumer in dict.fromkeys([src.durable, *src.consumers]):
            if (src.stream, consumer) in durables:
                raise ConfigError(file, f"sources[{i}].durable",
                                  f"durable `{consumer}` on `{src.stream}` is used twice")
            durables.add((src.stream, consumer))
        names.add(src.name)
        problem = src.partition_problem()
        if problem:
            raise ConfigError(file, f"sources[{i}].{problem[0]}", problem[1])
        if src.ack == "watermark" and src.partitions == 1 and max(src.ingest_actors, src.max_ingest_actors or 1) > 1:
            raise ConfigError(file, f"sources[{i}].ack",
                              "watermark acks a batch and every message before it, which is safe only when one "
                              f"ingest actor reads the consumer, but ingest_actors: {src.ingest_actors}"
                              + (f" and max_ingest_actors: {src.max_ingest_actors}" if src.max_ingest_actors else "")
                              + " share it; set ingest_actors: 1 and no max_ingest_actors, or partitions (one "
                              "consumer and ingest actor each), or ack: message")
        if src.max_ingest_actors is not None:
            if src.max_ingest_actors < src.ingest_actors:
                raise ConfigError(file, f"sources[{i}].max_ingest_actors",
                                  f"{src.max_ingest_actors} is below ingest_actors ({src.ingest_actors}), the minimum")
            if src.scale_down_pending >= src.scale_up_pending:
                raise ConfigError(file, f"sources[{i}].scale_down_pending",
                                  f"must be below scale_up_pending ({src.scale_up_pending}), or the count would flap")
    ordered = next((r.name for r in cfg.route_list if r.ordering_key), None)
    if ordered:
        for i, src in enumerate(cfg.sources):
            if src.partitions > 1:
                continue  # one ingest actor per partition, checked above
            if src.ingest_actors > 1 or (src.max_ingest_actors or 1) > 1:
                key = "ingest_actors" if src.ingest_actors > 1 else "max_ingest_actors"
                raise ConfigError(file, f"sources[{i}].{key}",
                                  f"route `{ordered}` has an ordering_key: several ingest actors on one source keep "
                                  "each key's order only as partitions (actors sharing one consumer interleave its "
                                  f"batches); set partitions: {max(src.ingest_actors, src.max_ingest_actors or 1)} "
                                  "and partition_token (the subject token that carries the key) instead, or "
                                  "ingest_actors: 1 and no max_ingest_actors")


def sequence_lane_problems(routes: list[Route]) -> list[tuple[int, str]]:
    """A sequence waits in one lane: routes with the same ordering key to the same destination share a
    priority (in two lanes, a later record could overtake an earlier one). (route index, message)."""
    lanes: dict[tuple[str, tuple[str, ...]], tuple[str, str]] = {}
    problems = []
    for i, route in enumerate(routes):
        if not route.ordering_key:
            continue
        for dest in route.destinations:
            first = lanes.setdefault((dest, tuple(route.ordering_key)), (route.name, route.priority))
            if first[1] != route.priority:
                problems.append((i, f"`{route.priority}`, but route `{first[0]}` sends the same ordering key "
                                    f"{route.ordering_key} to `{dest}` as `{first[1]}`: one sequence needs one "
                                    f"priority; expected `{first[1]}`"))
    return problems


def _check_sequence_lanes(cfg: Config, routes_file: str) -> None:
    for i, message in sequence_lane_problems(cfg.route_list)[:1]:
        raise ConfigError(routes_file, f"routes[{i}].priority", message)


def parse_section(raw: Any, tp: Any, file: str = "<config>", path: str = "") -> Any:
    """Validate one part of a config (a destination, a source) on its own."""
    return _convert(raw, tp, file, path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and resolve a config file; raises ConfigError naming file, key and expectation."""
    p = Path(path)
    return parse_config(_read_yaml(p), str(p), p.parent)


def check_environment(cfg: Config, file: str = "<config>") -> None:
    """Fail at start-up, not at the first message, when a secret the config names is missing."""
    for name, dest in cfg.destinations.items():
        auth = getattr(dest, "auth", None)
        if auth and auth.token_env not in os.environ:
            raise ConfigError(file, f"destinations.{name}.auth.token_env",
                              f"environment variable `{auth.token_env}` is not set")
    for key in ("user_env", "password_env", "token_env"):
        var = getattr(cfg.nats, key)
        if var and var not in os.environ:
            raise ConfigError(file, f"nats.{key}", f"environment variable `{var}` is not set")


def config_schema() -> dict[str, Any]:
    from router.schema_docs import with_field_docs  # the field comments above, as descriptions

    return with_field_docs(msgspec.json.schema(Config, schema_hook=schema_hook), Config)


def routes_schema() -> dict[str, Any]:
    from router.schema_docs import with_field_docs

    return with_field_docs(msgspec.json.schema(RoutesFile, schema_hook=schema_hook), RoutesFile)
