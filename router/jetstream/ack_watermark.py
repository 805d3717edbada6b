"""Acks by watermark: one AckAll per settled batch instead of one ack per message.

With ``ack_policy: all`` an ack of stream sequence ``s`` acks every message of the consumer up to
``s``. That is safe only when nothing at or below ``s`` is still unsettled anywhere, so it needs a
consumer with one reader (the config allows it for one ingest actor, or one per partition) and
this bookkeeping in that reader:

- every fetched batch stays *open* until all of its messages are final; the ack point is always
  below the lowest stream sequence of any open batch;
- a message NAKed back to the server is *awaited*: the ack point stays below it until it comes
  again in a later batch (which then holds the point until it is settled), and no progress ack
  goes to any copy of it meanwhile (that would put its redelivery off); one that has not come
  back within ``patience`` (deleted from the stream by its limits, say) makes the reader read the
  consumer again from its ack floor, like a gap;
- a settled batch above that point is *held* until the batches below it settle, then one ack to
  the reply subject of its highest message covers it and every held batch under it;
- a delivery that never arrived (its delivery sequence skipped, e.g. lost with a broken
  connection) is pending on the server with a stream sequence nobody here knows: from then on
  no ack is safe (``broken``); the reader finishes what it holds and reads the consumer again from
  its ack floor (``streams.rewind_to_ack_floor``), and dedup drops what comes twice.

The server ignores an AckAll, and a NAK, whose delivery sequence is not above the last ack's, so
the point chosen is the highest stream sequence whose delivery sequence is above the last ack's
and below that of every open batch (their NAKs and acks must still count).
"""

from __future__ import annotations

from typing import Any

from router.jetstream.pull_consumer import stream_seq

__all__ = ["AckWatermark"]


class _Held:
    __slots__ = ("top", "dseq", "reply", "msgs")

    def __init__(self, top: int, dseq: int, reply: str, msgs: Any) -> None:
        self.top, self.dseq, self.reply, self.msgs = top, dseq, reply, msgs


class AckWatermark:
    def __init__(self, next_dseq: int = 0, patience: float = 60.0) -> None:
        # The delivery sequence the next delivery must have; 0: not known (the first batch sets it).
        self._next_dseq = next_dseq
        self.patience = patience  # seconds a NAKed message may take to come back
        self._open: dict[int, tuple[int, int]] = {}  # batch id -> (its lowest stream seq, its first delivery seq)
        # batch id -> (highest stream seq, its delivery seq, its ack subject, the batch's messages)
        self._tops: dict[int, tuple[int, int, str, Any]] = {}
        self._held: list[_Held] = []  # settled, not acked yet
        self._awaiting: dict[int, float] = {}  # stream sequence NAKed, not delivered again yet -> by when
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
            for s in self._awaiting.keys() & set(seqs):
                del self._awaiting[s]
        self._open[bid] = (min(seqs), first)
        i = seqs.index(max(seqs))
        self._tops[bid] = (seqs[i], dseqs[i], msgs[i].reply, msgs)

    def given_back(self, bid: int, seqs: list[int], final: list[Any], now: float) -> None:
        """Messages of batch ``bid`` with these stream sequences are NAKed (call it before the NAK goes
        out): the server sends them again, and nothing at or above them is acked before then.
        ``final``: the batch's other messages, the only ones ``held`` may return (a progress ack of a
        NAKed message would put its redelivery off for as long as it is held)."""
        self._awaiting.update(dict.fromkeys(seqs, now + self.patience))
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
        lows = [low for low, _ in self._open.values()]
        if self._awaiting:
            lows.append(min(self._awaiting))
        floor = min(lows) if lows else None  # every message below it is settled
        dfloor = min((d for _, d in self._open.values()), default=None)
        ackable = [h for h in self._held if (floor is None or h.top < floor)
                   and self._acked_dseq < h.dseq and (dfloor is None or h.dseq < dfloor)]
        if not ackable:
            return None
        point = max(ackable, key=lambda h: h.top)
        self._acked_sseq, self._acked_dseq = point.top, point.dseq
        self._held = [h for h in self._held if h.top > point.top]
        return point.reply

    def held(self) -> list[Any]:
        """The messages of settled batches waiting for the batches below them (they need progress acks
        while they wait). Not those whose delivery sequence is below the last ack's: no ack of theirs
        would count, so they are let run out their ``ack_wait`` and come again with a new one."""
        return [h.msgs for h in self._held if h.dseq > self._acked_dseq]

    def without_awaited(self, msgs: list[Any]) -> list[Any]:
        """``msgs`` less any copy of a message NAKed and not back yet (for progress acks)."""
        if not self._awaiting:
            return msgs
        return [m for m in msgs if stream_seq(m.reply) not in self._awaiting]

    def overdue(self, now: float) -> bool:
        """A NAKed message has not come back within ``patience``: then it is ``broken`` too."""
        if self._awaiting and min(self._awaiting.values()) < now:
            self.broken = True
        return self.broken

    @property
    def awaited(self) -> int:
        return len(self._awaiting)
