"""Acks by watermark: one AckAll per settled batch instead of one ack per message.

With ``ack_policy: all`` an ack of stream sequence ``s`` acks every message of the consumer up to
``s``. That is safe only when nothing at or below ``s`` is still unsettled anywhere, so it needs a
consumer with one reader (the config allows it for one ingest actor, or one per partition) and
this bookkeeping in that reader:

- every fetched batch stays *open* until all of its messages are final; the ack point is always
  below the lowest stream sequence of any open batch;
- a message NAKed back to the server is *awaited*: the ack point stays below it until it comes
  again in a later batch (which then holds the point until it is settled);
- a settled batch above that point is *held* until the batches below it settle, then one ack to
  the reply subject of its highest message covers it and every held batch under it;
- a delivery that never arrived (its delivery sequence skipped, e.g. lost with a broken
  connection) is pending on the server with a stream sequence nobody here knows: from then on
  no ack is safe (``broken``); the reader finishes what it holds and reads the consumer again from
  its ack floor (``streams.rewind_to_ack_floor``), and dedup drops what comes twice.

The server ignores an AckAll whose delivery sequence is not above the last one it took, so the
point chosen is the highest stream sequence whose delivery sequence is above the last ack's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AckWatermark"]


class _Held:
    __slots__ = ("top", "dseq", "reply", "msgs")

    def __init__(self, top: int, dseq: int, reply: str, msgs: Any) -> None:
        self.top, self.dseq, self.reply, self.msgs = top, dseq, reply, msgs


class AckWatermark:
    def __init__(self, next_dseq: int = 0) -> None:
        # The delivery sequence the next delivery must have; 0: not known (the first batch sets it).
        self._next_dseq = next_dseq
        self._open: dict[int, int] = {}  # batch id -> its lowest stream sequence
        # batch id -> (highest stream seq, its delivery seq, its ack subject, the batch's messages)
        self._tops: dict[int, tuple[int, int, str, Any]] = {}
        self._held: list[_Held] = []  # settled, not acked yet
        self._awaiting: set[int] = set()  # stream sequences NAKed, not delivered again yet
        self._acked_sseq = 0
        self._acked_dseq = 0
        self.broken = False

    def fetched(self, bid: int, seqs: list[int], dseqs: list[int], msgs: list[Any]) -> None:
        """A batch as fetched: its messages (each with its ack subject, ``reply``) and their stream and
        delivery sequences, in delivery order."""
        first, last = dseqs[0], dseqs[-1]
        # One connection delivers in order: consecutive sequences end exactly len - 1 apart.
        if (self._next_dseq and first != self._next_dseq) or last - first != len(dseqs) - 1:
            self.broken = True
        self._next_dseq = last + 1
        if self._awaiting:
            self._awaiting.difference_update(seqs)
        self._open[bid] = min(seqs)
        i = seqs.index(max(seqs))
        self._tops[bid] = (seqs[i], dseqs[i], msgs[i].reply, msgs)

    def given_back(self, bid: int, seqs: list[int], final: list[Any]) -> None:
        """Messages of batch ``bid`` with these stream sequences are NAKed (call it before the NAK goes
        out): the server sends them again, and nothing at or above them is acked before then.
        ``final``: the batch's other messages, the only ones ``held`` may return (a progress ack of a
        NAKed message would put its redelivery off for as long as it is held)."""
        self._awaiting.update(seqs)
        top, dseq, reply, _ = self._tops[bid]
        self._tops[bid] = (top, dseq, reply, final)

    def settled(self, bid: int) -> str | None:
        """Every message of batch ``bid`` is final or given back; the ack subject to send one AckAll
        to, or None (a batch below it is still open, a message below it awaited, or no ack is safe)."""
        self._open.pop(bid, None)
        self._held.append(_Held(*self._tops.pop(bid)))
        self._held = [h for h in self._held if h.top > self._acked_sseq]  # the others are acked already
        if self.broken:
            return None
        lows = list(self._open.values())
        if self._awaiting:
            lows.append(min(self._awaiting))
        floor = min(lows) if lows else None  # every message below it is settled
        below = [h for h in self._held if floor is None or h.top < floor]
        ackable = [h for h in below if h.dseq > self._acked_dseq and h.top > self._acked_sseq]
        if not ackable:
            return None
        point = max(ackable, key=lambda h: h.top)
        self._acked_sseq, self._acked_dseq = point.top, point.dseq
        self._held = [h for h in self._held if h.top > point.top]
        return point.reply

    def held(self) -> list[Any]:
        """The messages of settled batches waiting for the batches below them (they need progress acks
        while they wait). Not those whose delivery sequence is below the last ack's (a redelivery
        with a lower stream sequence was acked first): no ack of theirs would count, so they are let
        run out their ``ack_wait`` and come again with a new one."""
        return [h.msgs for h in self._held if h.dseq > self._acked_dseq]

    @property
    def open_batches(self) -> int:
        return len(self._open)
