"""Partitioned sources: the NATS server decides which ingest actor handles which key.

With ``partitions: N`` the source stream stores each message under its subject with a partition
number in front: the stream's subject transform ``{{partition(N,w)}}`` hashes the subject token
that carries the key (FNV-1a, modulo N), so every event of one key is stored in one partition.
Partition ``p`` is read by its own durable consumer ``<durable>-p<p>`` (``Source.consumers``),
filtered on ``p.<subject>``, and by one ingest actor: a key's events are handled by one actor,
in stream order. The ingest takes the partition number off again, so routes, dead letters and
their replays see the subject the publisher used.

Example: ``subjects: ["retail.orders.*"]``, ``partitions: 4``, ``partition_token: 3``:
transform ``retail.orders.*`` -> ``{{partition(4,1)}}.retail.orders.{{wildcard(1)}}``;
``retail.orders.O-17`` is stored as ``1.retail.orders.O-17`` and read by ``<durable>-p1``.
"""

from __future__ import annotations

from typing import Any

from nats.js import api

__all__ = ["consumer_filter", "describe", "is_partition_transform", "partition_of",
           "partition_transform", "strip_partition", "unpartitioned"]


def partition_transform(src: Any) -> api.SubjectTransform | None:
    """The stream's subject transform a partitioned source needs (None: not partitioned)."""
    if src.partitions <= 1:
        return None
    subject = src.subjects[0]
    tokens, wildcards, key_wildcard = [], 0, 0
    for pos, tok in enumerate(subject.split("."), 1):
        if tok == "*":
            wildcards += 1
            if pos == src.partition_token:
                key_wildcard = wildcards
            tokens.append(f"{{{{wildcard({wildcards})}}}}")
        else:
            tokens.append(tok)  # a literal, or the trailing `>` (carried over as it is)
    return api.SubjectTransform(src=subject, dest=".".join([f"{{{{partition({src.partitions},{key_wildcard})}}}}",
                                                            *tokens]))


def is_partition_transform(t: Any) -> bool:
    """Whether a stream's subject transform is one of these (the router reads such a stream partitioned)."""
    return t is not None and (t.dest or "").replace(" ", "").startswith("{{partition(")


def describe(t: Any) -> str:
    return f"{t.src} -> {t.dest}" if t is not None else "none"


def consumer_filter(src: Any, partition: int) -> str:
    return f"{partition}.{src.subjects[0]}"


def strip_partition(stored: str) -> str:
    """The publisher's subject of a message read from a partition consumer (its filter guarantees
    the partition number in front)."""
    return stored[stored.index(".") + 1:]


def unpartitioned(src: Any, stored: str) -> str:
    """The publisher's subject of any message of a partitioned source's stream; one stored before the
    stream was partitioned (or a source without partitions) keeps its subject."""
    from router.ingest.routing import wildcard_match  # late: the pull consumer imports this module too

    head, _, rest = stored.partition(".")
    if src.partitions > 1 and head.isdigit() and rest and wildcard_match(src.subjects[0], rest):
        return rest
    return stored


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition the server stores a key token in: FNV-1a (32 bit) of its bytes, modulo N."""
    h = 0x811C9DC5
    for b in key.encode() if isinstance(key, str) else key:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions
