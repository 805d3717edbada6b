"""Field docs for the JSON Schema, from the ``# comment`` on each field's declaration line.

The config Structs document every field where it is declared (``fetch_batch: int = 500  #
messages per pull request``); editors show a schema's ``description``, so the comments are copied
there. Read from the source with ``tokenize``, so a ``#`` inside a string is never taken for one.
"""

from __future__ import annotations

import inspect
import io
import textwrap
import tokenize
from functools import lru_cache
from typing import Any

import msgspec

__all__ = ["field_comments", "with_field_docs"]


@lru_cache(maxsize=None)
def _own_comments(cls: type) -> dict[str, str]:
    """``field -> comment`` for the fields declared in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): the schema goes without docs
        return {}
    out: dict[str, str] = {}
    line_start: dict[int, tuple[int, str]] = {}  # line -> (column, first token) of its first token
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row, col = tok.start
        if tok.type == tokenize.COMMENT:
            first = line_start.get(row)
            # A field line of the class body: `name: ...  # doc` (indented one level, a NAME first).
            if first and first[0] > 0 and first[1].isidentifier():
                out.setdefault(first[1], tok.string.lstrip("#").strip())
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE) and row not in line_start:
            line_start[row] = (col, tok.string)
    fields = set(getattr(cls, "__annotations__", {}))
    return {k: v for k, v in out.items() if k in fields}


def field_comments(cls: type) -> dict[str, str]:
    """``encode name -> comment`` for every field of a Struct, inherited ones included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, msgspec.Struct) and klass is not msgspec.Struct:
            docs.update(_own_comments(klass))
    names = {f.name: f.encode_name for f in msgspec.structs.fields(cls)}
    return {names[k]: v for k, v in docs.items() if k in names}


def _structs(tp: Any, seen: dict[str, type]) -> None:
    """Every Struct reachable from ``tp`` (fields, containers, unions), by class name."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if tp.__name__ in seen:
            return
        seen[tp.__name__] = tp
        for f in msgspec.structs.fields(tp):
            _structs(f.type, seen)
        return
    for arg in getattr(tp, "__args__", ()) or ():
        _structs(arg, seen)
    origin = getattr(tp, "__origin__", None)
    if origin is not None:
        _structs(origin, seen)


def with_field_docs(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """``schema`` (msgspec's, for ``root``) with each documented field's comment as its ``description``.

    A type that documents itself (``Duration``: how to write one) keeps that text after the field's.
    """
    classes: dict[str, type] = {}
    _structs(root, classes)
    for name, definition in schema.get("$defs", {}).items():
        cls = classes.get(name)
        if cls is None:
            continue
        for field, doc in field_comments(cls).items():
            prop = definition.get("properties", {}).get(field)
            if prop is None:
                continue
            own = prop.get("description")
            prop["description"] = f"{doc}. {own}" if own and not doc.endswith(".") else f"{doc} {own}" if own else doc
    return schema
