"""The thorough check of a route table (and of the config around it) before it is applied.

``load_config`` stops at the first error, which is right when starting the router; an operator
editing routes during a peak wants every problem at once. So here each part is validated on
its own (each route entry, each predicate, each config section and entry), and a problem says
the file, the line, the key path and what was expected. Besides errors (the router would refuse
the file) it warns about what the router would accept but almost surely is a mistake:

- a route subject no source captures (the route can never see an event),
- an event type outside the known families and types (``order.craeted``), with a near miss,
- a ``where`` path the payload model does not have (``data.chanel``), with a near miss,
- a destination no route uses,
- an environment variable the config names that is not set, a file it names that does not exist.

Plain logic: ``check_routes`` / ``check_config`` return a ``CheckReport``; the commands in
``routes_cli`` and ``cli`` print it. An unreadable file (missing, not YAML, not a mapping) raises
``ConfigError``: there is nothing to check.
"""

from __future__ import annotations

import difflib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Union, get_args, get_origin

import msgspec

from router.codecs import ENCODERS
from router.codecs.models import MODEL_BY_FAMILY
from router.config import (Config, ConfigError, Match, Predicate, Route, Source, parse_config, read_yaml_text,
                           sequence_lane_problems)
from router.config_base import Name, dec_hook
from router.control.yaml_lines import LineIndex
from router.sinks import SINK_KINDS, DestinationConfig

__all__ = ["CheckReport", "Problem", "check_config", "check_routes", "known_event_types", "subjects_overlap"]

# Fields of the envelope a `where` path may name (besides `data.<payload field>`).
ENVELOPE_FIELDS = ("source", "type", "idempotency_key", "correlation_id", "occurred_at", "subject")


class Problem(NamedTuple):
    severity: str  # "error": the router would refuse it; "warning": accepted, but almost surely a mistake
    file: str
    line: int | None
    path: str  # key path, e.g. `routes[3].match.types[0]`
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.severity}: {where}: {self.path or '(top level)'}: {self.message}"


class CheckReport(NamedTuple):
    problems: list[Problem]
    routes: list[Route]  # the routes that are valid on their own (all of them when there is no error)
    config: Config | None  # the whole config, when one was checked and has no error
    notes: list[str]  # what was not checked, and why

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def exit_code(self, strict: bool = False) -> int:
        return 1 if self.errors or (strict and self.warnings) else 0

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        return f"{e} error(s), {w} warning(s)" + ("" if e else f"; {len(self.routes)} route(s)")


# ---------------------------------------------------------------------------------------------
# what the router knows about events

@lru_cache(maxsize=1)
def known_event_types() -> frozenset[str]:
    """The types the retail generator produces (the families it models are MODEL_BY_FAMILY's).

    The generator picks types inside its methods, so they are gathered by drawing from each
    family: deterministic (fixed seed), and enough draws that the rarest type (1 in 11) shows.
    """
    from router.loadtest.retail_events import RetailEventFactory

    factory = RetailEventFactory(seed=1)
    draws = (factory.order, factory.inventory, factory.shipment, factory.return_, factory.refund)
    return frozenset(draw().type for draw in draws for _ in range(300))


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (``*`` one token, ``>`` one or more at the end)."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" and y is not None or y == ">" and x is not None:
            return True
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True


def _unwrap(tp: Any) -> Any:
    """The Struct (or list / dict) inside ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = get_origin(tp)
        if origin is not None and getattr(tp, "__metadata__", None) is not None:  # Annotated
            tp = get_args(tp)[0]
        elif origin is Union or type(tp).__name__ == "UnionType":
            inner = [t for t in get_args(tp) if t is not type(None)]
            if len(inner) != 1:
                return tp
            tp = inner[0]
        else:
            return tp


def _payload_path_problem(model: type, parts: list[str], family: str) -> str | None:
    """Why ``data.<parts>`` is not a field of ``model`` (None when it is)."""
    tp: Any = model
    walked = "data"
    for part in parts:
        tp = _unwrap(tp)
        if get_origin(tp) in (list, tuple, set, frozenset) or tp in (list, tuple):
            return f"`{walked}` is a list in {family} payloads; a `where` path cannot look inside a list"
        if get_origin(tp) is dict or tp is dict or tp is Any:
            return None  # free-form: anything may be there
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return f"`{walked}` is a value in {family} payloads, it has no field `{part}`"
        names = [f.encode_name for f in msgspec.structs.fields(tp)]
        if part not in names:
            near = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean `{near[0]}`?" if near else f"; it has {', '.join(names)}"
            return f"no field `{part}` in {family} payloads{hint}"
        tp = next(f.type for f in msgspec.structs.fields(tp) if f.encode_name == part)
        walked += f".{part}"
    return None


# ---------------------------------------------------------------------------------------------
# the checker

_AT = re.compile(r" - at `\$(.*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`")


class _RouteParts(NamedTuple):
    at: str  # `routes[3]`
    rest: Route | None  # name, destinations, encoder (the match left out); None when invalid
    match: Match | None  # subjects and types (the predicates left out); None when invalid
    where: list[str]  # the `where` fields whose predicate is valid
    route: Route | None  # the whole route, when every part is valid


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self._index: dict[str, LineIndex] = {}

    # -- reporting ------------------------------------------------------------------------------

    def add(self, severity: str, file: str, path: str, message: str) -> None:
        idx = self._index.get(file)
        self.problems.append(Problem(severity, file, idx.line_of(path) if idx else None, path, message))

    def read(self, path: Path) -> Any:
        """The YAML document of ``path``; ConfigError when there is none to check."""
        doc, text = read_yaml_text(path)
        self._index[str(path)] = LineIndex(text)
        return doc

    def convert(self, obj: Any, tp: Any, file: str, path: str) -> Any:
        """``obj`` as ``tp``, or None after reporting why not (at the key msgspec names)."""
        try:
            return msgspec.convert(obj, tp, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            m = _AT.search(msg)
            inner = ""
            if m:
                msg, inner = msg[: m.start()], m.group(1)
                path += inner
            unknown = _UNKNOWN_FIELD.match(msg)
            if unknown:
                path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
                msg = "unknown key" + ("" if inner else self._suggest(unknown.group(1), tp))
            if path.endswith(".kind") and msg.startswith("Invalid value"):
                msg += f"; expected a destination kind: {', '.join(sorted(SINK_KINDS))}"
            self.add("error", file, path.lstrip("."), msg)
            return None

    @staticmethod
    def _suggest(key: str, tp: Any) -> str:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            names = [f.encode_name for f in msgspec.structs.fields(tp)]
            near = difflib.get_close_matches(key, names, n=1)
            return f"; did you mean `{near[0]}`?" if near else f"; expected one of: {', '.join(names)}"
        return ""

    # -- routes -----------------------------------------------------------------------------------

    def routes(self, raw: Any, file: str, prefix: str) -> list[_RouteParts]:
        """Each route entry, and each part of it, on its own: a bad predicate does not hide a bad
        destination in the same route, nor a bad route the next one."""
        if not isinstance(raw, list) or not raw:
            self.add("error", file, prefix, f"Expected a non-empty list of routes, got `{type(raw).__name__}`"
                     if not isinstance(raw, list) else "Expected at least one route")
            return []
        out = []
        for i, entry in enumerate(raw):
            at = f"{prefix}[{i}]"
            if not isinstance(entry, dict):
                self.add("error", file, at, f"Expected a route (name, match, destinations), got `{type(entry).__name__}`")
                continue
            ok = True
            where: list[str] = []
            match = entry.get("match", {})
            if isinstance(match, dict) and isinstance(match.get("where"), dict):
                for field, pred in match["where"].items():
                    if self.convert(pred, Predicate, file, f"{at}.match.where.{field}") is None:
                        ok = False
                    else:
                        where.append(str(field))
                match = {k: v for k, v in match.items() if k != "where"}
            match_part = self.convert(match, Match, file, f"{at}.match")
            rest = self.convert({k: v for k, v in entry.items() if k != "match"}, Route, file, at)
            route = None
            if ok and match_part is not None and rest is not None:
                route = self.convert(entry, Route, file, at)  # what is left: a `where` that is not a mapping
            out.append(_RouteParts(at, rest, match_part, where, route))
        return out

    def route_semantics(self, parts: list[_RouteParts], file: str, destinations: set[str] | None) -> None:
        seen: dict[str, str] = {}
        for p in parts:
            r = p.rest
            if r is not None:
                if r.name in seen:
                    self.add("error", file, f"{p.at}.name", f"duplicate route name `{r.name}` (also {seen[r.name]})")
                seen.setdefault(r.name, p.at)
                if destinations is not None:
                    for j, d in enumerate(r.destinations):
                        if d not in destinations:
                            near = difflib.get_close_matches(d, sorted(destinations), n=1)
                            hint = f"did you mean `{near[0]}`? " if near else ""
                            self.add("error", file, f"{p.at}.destinations[{j}]", f"unknown destination `{d}`; "
                                     f"{hint}expected one of: {', '.join(sorted(destinations))}")
                self._encoder(r, p.match, file, p.at)
            if p.match is not None:
                self._types(p.match, file, p.at)
                self._where(p.match, p.where, file, p.at)
        valid = [p for p in parts if p.rest is not None]
        for i, message in sequence_lane_problems([p.rest for p in valid]):
            self.add("error", file, f"{valid[i].at}.priority", message)

    def _encoder(self, r: Route, match: Match | None, file: str, at: str) -> None:
        enc = ENCODERS.get(r.encoder)
        if enc is None:
            near = difflib.get_close_matches(r.encoder, sorted(ENCODERS), n=1)
            hint = f"did you mean `{near[0]}`? " if near else ""
            self.add("error", file, f"{at}.encoder",
                     f"unknown encoder `{r.encoder}`; {hint}expected one of: {', '.join(sorted(ENCODERS))}")
            return
        if enc.families is None or match is None:
            return
        if not match.types:
            self.add("error", file, f"{at}.match.types", f"encoder `{enc.name}` only encodes "
                     f"{', '.join(sorted(enc.families))} events: list the event types this route takes")
        for k, t in enumerate(match.types):
            if t.split(".", 1)[0] not in enc.families:
                self.add("error", file, f"{at}.match.types[{k}]", f"encoder `{enc.name}` cannot encode `{t}`; "
                         f"it takes {', '.join(sorted(enc.families))} events")

    def _types(self, m: Match, file: str, at: str) -> None:
        known = known_event_types()
        families = sorted(MODEL_BY_FAMILY)
        for k, t in enumerate(m.types):
            family = t.split(".", 1)[0]
            if t in known or t in (">", "*"):
                continue
            if family not in MODEL_BY_FAMILY:
                near = difflib.get_close_matches(family, families, n=1)
                guess = difflib.get_close_matches(t, sorted(known), n=1)
                hint = (f"; did you mean `{guess[0]}`?" if guess and "*" not in t and ">" not in t
                        else f"; did you mean `{near[0]}`?" if near else "")
                self.add("warning", file, f"{at}.match.types[{k}]", f"`{t}` is outside the known event families "
                         f"({', '.join(families)}){hint}")
            elif "*" not in t and ">" not in t:
                same = sorted(x for x in known if x.startswith(family + "."))
                near = difflib.get_close_matches(t, same, n=1)
                hint = f"; did you mean `{near[0]}`?" if near else ""
                self.add("warning", file, f"{at}.match.types[{k}]", f"`{t}` is not a known {family} event type "
                         f"({', '.join(same)}){hint}")

    def _where(self, m: Match, where: list[str], file: str, at: str) -> None:
        # The families this route's types select; any type (or a wildcard family): all of them.
        fams: set[str] = set()
        for t in m.types or [">"]:
            head = t.split(".", 1)[0]
            fams |= set(MODEL_BY_FAMILY) if head in ("*", ">") else {head} if head in MODEL_BY_FAMILY else set()
        for field in where:
            path = f"{at}.match.where.{field}"
            head, *rest = field.split(".")
            if head in ENVELOPE_FIELDS:
                if rest:
                    self.add("warning", file, path, f"`{head}` is an envelope value; it has no field `{rest[0]}`")
                continue
            if head != "data":
                near = difflib.get_close_matches(head, [*ENVELOPE_FIELDS, "data"], n=1)
                hint = f"; did you mean `{near[0]}`?" if near else ""
                self.add("warning", file, path, f"`{head}` is not an event field (envelope: "
                         f"{', '.join(ENVELOPE_FIELDS)}; payload: data.<field>){hint}")
                continue
            if not rest or not fams:
                continue
            why = {f: _payload_path_problem(MODEL_BY_FAMILY[f], rest, f) for f in sorted(fams)}
            failing = {f: w for f, w in why.items() if w}
            # Named families: each must have the path. Any type (every family): warn only when none has it.
            if m.types and any(t.split(".", 1)[0] not in ("*", ">") for t in m.types):
                for w in failing.values():
                    self.add("warning", file, path, w)
            elif len(failing) == len(why):
                self.add("warning", file, path, f"no event family's payload has `{field}` "
                         f"(e.g. {next(iter(failing.values()))})")

    # -- the config around the routes ---------------------------------------------------------------

    def config(self, raw: Any, file: str, base_dir: Path, routes_file: Path | None) -> tuple[Any, ...]:
        """Each section and each source / destination on its own. Returns (subjects the sources
        capture, destination names, the raw routes, the file they are in, their key prefix)."""
        if not isinstance(raw, dict):
            raise ConfigError(file, "", f"Expected a mapping at the top level, got `{type(raw).__name__}`")
        fields = {f.encode_name: f for f in msgspec.structs.fields(Config)}
        for key in raw:
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"did you mean `{near[0]}`?" if near else f"expected one of: {', '.join(fields)}"
                self.add("error", file, str(key), f"unknown key; {hint}")
        for name, f in fields.items():
            if f.required and name not in raw and not (name == "routes" and routes_file):
                self.add("error", file, "", f"Object missing required field `{name}`")
        sources = []
        raw_sources = raw.get("sources")
        if isinstance(raw_sources, list) and raw_sources:
            for i, s in enumerate(raw_sources):
                src = self.convert(s, Source, file, f"sources[{i}]")
                if src is not None:
                    sources.append((i, src))
        elif "sources" in raw:
            self.convert(raw_sources, fields["sources"].type, file, "sources")
        self._source_semantics(sources, file)
        # From the raw entries: a source with an error elsewhere still says what it captures.
        captured = [subj for s in raw_sources if isinstance(s, dict) and isinstance(s.get("subjects"), list)
                    for subj in s["subjects"] if isinstance(subj, str)] if isinstance(raw_sources, list) else []
        dest_names: set[str] = set()
        raw_dests = raw.get("destinations")
        if isinstance(raw_dests, dict) and raw_dests:
            for name, d in raw_dests.items():
                dest_names.add(str(name))
                self.convert(name, Name, file, f"destinations.{name}")
                dest = self.convert(d, DestinationConfig, file, f"destinations.{name}")
                if dest is not None:
                    self._destination_environment(str(name), dest, file)
        elif "destinations" in raw:
            self.convert(raw_dests, fields["destinations"].type, file, "destinations")
        for name, f in fields.items():
            if name not in ("sources", "destinations", "routes") and name in raw:
                value = self.convert(raw[name], f.type, file, name)
                if name == "nats" and value is not None:
                    self._nats_environment(value, file)
        routes_raw: Any = raw.get("routes")
        routes_name, prefix = file, "routes"
        if routes_file is not None or isinstance(routes_raw, str):
            path = routes_file or Path(routes_raw)
            if routes_file is None and not path.is_absolute():
                path = base_dir / path
            if routes_file is None and not path.exists():
                self.add("error", file, "routes", f"routes file `{path}` not found")
                routes_raw = None
            else:
                # A routes file named on the command line that cannot be read raises: exit 2.
                routes_raw, routes_name, prefix = self.routes_document(path), str(path), "routes"
        elif "routes" in raw and not isinstance(routes_raw, list):
            self.convert(routes_raw, fields["routes"].type, file, "routes")
            routes_raw = None
        return captured, dest_names, routes_raw, routes_name, prefix

    def routes_document(self, path: Path) -> Any:
        """The `routes` list of a routes file (None after reporting what is wrong with it)."""
        doc = self.read(path)
        if not isinstance(doc, dict) or "routes" not in doc:
            self.add("error", str(path), "", "Expected a mapping with a `routes` list")
            return None
        for key in doc:
            if key != "routes":
                self.add("error", str(path), str(key), "unknown key: a routes file holds only `routes`")
        return doc["routes"]

    def _source_semantics(self, sources: list[tuple[int, Any]], file: str) -> None:
        names: set[str] = set()
        durables: set[tuple[str, str]] = set()
        for i, src in sources:
            if src.name in names:
                self.add("error", file, f"sources[{i}].name", f"duplicate source name `{src.name}`")
            for consumer in dict.fromkeys([src.durable, *src.consumers]):
                if (src.stream, consumer) in durables:
                    self.add("error", file, f"sources[{i}].durable",
                             f"durable `{consumer}` on `{src.stream}` is used twice")
                durables.add((src.stream, consumer))
            names.add(src.name)
            problem = src.partition_problem()
            if problem:
                self.add("error", file, f"sources[{i}].{problem[0]}", problem[1])

    def _env(self, var: str | None, file: str, path: str) -> None:
        if var and var not in os.environ:
            self.add("warning", file, path, f"environment variable `{var}` is not set here "
                     "(the router refuses to start without it)")

    def _file(self, name: str | None, file: str, path: str) -> None:
        if name and not Path(name).expanduser().exists():
            self.add("warning", file, path, f"file `{name}` does not exist here "
                     "(relative paths are taken from the router's working directory)")

    def _destination_environment(self, name: str, dest: Any, file: str) -> None:
        auth = getattr(dest, "auth", None)
        if auth is not None:
            self._env(auth.token_env, file, f"destinations.{name}.auth.token_env")

    def _nats_environment(self, nats: Any, file: str) -> None:
        for key in ("user_env", "password_env", "token_env"):
            self._env(getattr(nats, key), file, f"nats.{key}")
        self._file(nats.credentials, file, "nats.credentials")
        if nats.tls is not None:
            for key in ("ca_file", "cert_file", "key_file"):
                self._file(getattr(nats.tls, key), file, f"nats.tls.{key}")

    def subjects(self, parts: list[_RouteParts], captured: list[str], file: str) -> None:
        for p in parts:
            for k, subj in enumerate(p.match.subjects if p.match is not None else []):
                if not any(subjects_overlap(subj, c) for c in captured):
                    self.add("warning", file, f"{p.at}.match.subjects[{k}]", f"no source captures `{subj}` "
                             f"(sources capture {', '.join(captured)}): this route never sees an event")

    def unused(self, routes_raw: Any, dest_names: set[str], file: str) -> None:
        # From the raw entries: a route with an error elsewhere still says where it sends.
        used = {d for r in routes_raw if isinstance(r, dict) and isinstance(r.get("destinations"), list)
                for d in r["destinations"] if isinstance(d, str)}
        for name in sorted(dest_names - used):
            self.add("warning", file, f"destinations.{name}", f"no route sends anything to `{name}`")


# ---------------------------------------------------------------------------------------------
# entry points

def check_routes(routes_path: str | os.PathLike[str], config_path: str | os.PathLike[str] | None = None
                 ) -> CheckReport:
    """Check a routes file; with the config, also against its destinations and sources (the
    routes file stands in for whatever routes the config names)."""
    if config_path is not None:
        return check_config(config_path, routes_path)
    c = _Checker()
    path = Path(routes_path)
    doc = c.read(path)
    if not isinstance(doc, dict) or "routes" not in doc:
        raise ConfigError(str(path), "", "Expected a mapping with a `routes` list")
    for key in doc:
        if key != "routes":
            c.add("error", str(path), str(key), "unknown key: a routes file holds only `routes`")
    parts = c.routes(doc["routes"], str(path), "routes")
    c.route_semantics(parts, str(path), None)
    c.notes.append("without -c (the router config): destinations, source subjects, environment variables "
                   "and files are not checked")
    return _report(c, parts, None)


def check_config(config_path: str | os.PathLike[str], routes_path: str | os.PathLike[str] | None = None
                 ) -> CheckReport:
    """Check a config and its routes (inline, its routes file, or ``routes_path`` instead)."""
    c = _Checker()
    path = Path(config_path)
    raw = c.read(path)
    override = Path(routes_path) if routes_path is not None else None
    captured, dest_names, routes_raw, routes_file, prefix = c.config(raw, str(path), path.parent, override)
    parts = c.routes(routes_raw, routes_file, prefix) if routes_raw is not None else []
    c.route_semantics(parts, routes_file, dest_names)
    c.subjects(parts, captured, routes_file)
    if isinstance(routes_raw, list):
        c.unused(routes_raw, dest_names, str(path))
    cfg = None
    if not [p for p in c.problems if p.severity == "error"]:
        # The run-time loader has the last word: anything it refuses that the checks above let
        # through is an error here too.
        if override is not None:
            raw = {**raw, "routes": str(override.resolve())}
        try:
            cfg = parse_config(raw, str(path), path.parent)
        except ConfigError as exc:
            c.add("error", exc.file, exc.path, exc.message)
    return _report(c, parts, cfg)


def _report(c: _Checker, parts: list[_RouteParts], cfg: Config | None) -> CheckReport:
    problems = sorted(c.problems, key=lambda p: (p.file, p.line or 0))  # stable: same line keeps its order
    return CheckReport(problems, [p.route for p in parts if p.route is not None], cfg, c.notes)
