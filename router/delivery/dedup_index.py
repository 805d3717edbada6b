"""Which idempotency keys a destination shard already has: windowed and memory-bounded.

Keys are kept as 64-bit BLAKE2b hashes (8 bytes on the journal, 8 in memory): at ten million
keys per destination inside one window the chance of any collision is about 3e-6.

Entries live in time buckets (1/256 of the window). Each key has a place: its bucket, then the
order of its latest add. Expiry drops whole buckets; the size bound trims the oldest places one by
one (a bucket may be cut partway), so a burst larger than ``max_keys`` keeps exactly the newest
``max_keys`` and never forgets more than it must. A key added again with the same or a newer time
moves to that place; added again with an older time, its newer place stands.

Storage is columnar, about 17 bytes a held key: a few runs of numpy arrays, each sorted by key,
holding the key hash and its place (``bucket << 32 | add sequence``; 0 once the entry is dead).
Every add becomes a small run, and runs merge log-structured (a run merges into the one before it
while that one is not much bigger), so a batch lookup (``contains_many``) is a few vectorised
steps per run, and a big run has a radix table to jump close to a key. A key has at most one held
entry: adding it again kills its older entry in place. Dead, trimmed and expired entries stay
behind as garbage until a merge or a compaction drops them (compaction once garbage passes a
quarter of the held keys). The size bound takes the oldest places from a sorted list of candidates
found by one scan now and then, not on every add.
"""

from __future__ import annotations

import bisect
import sys
import time
from typing import Callable, Iterable

import numpy as np

__all__ = ["DedupIndex"]

BUCKETS_PER_WINDOW = 256
MIN_RUN = 4096  # runs smaller than this merge right away: fewer runs for a lookup to search
FANOUT = 8  # a run merges into the one before it while that one is at most FANOUT times bigger
RADIX_MIN = 1 << 15  # runs this big get a radix table for lookups
KEYS_PER_SLICE = 8  # radix table size: 1 byte a key (intp entries), at most ~6 halving steps
PAD = 64  # sentinel entries after a run's keys: lookups never index past the end

_U64 = np.uint64
_END = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # sentinel key closing every run: lookups stay in bounds
_SEQ_BITS = 32


def _as_u64(hashes: Iterable[int] | np.ndarray) -> np.ndarray:
    if isinstance(hashes, np.ndarray):
        return hashes.astype(_U64, copy=False)
    if not isinstance(hashes, (list, tuple)):
        hashes = list(hashes)
    return np.fromiter(hashes, _U64, len(hashes))


def _array_bytes(a: np.ndarray) -> int:
    return sys.getsizeof(a) + (a.nbytes if a.base is not None else 0)  # getsizeof counts owned data only


class _Run:
    """Entries sorted by key, unique keys, then ``PAD`` dead sentinel entries (key ``_END``).

    A big run also has a radix table: where each slice of the key space starts. A lookup jumps
    there and finishes with a few vectorised halving steps inside the slice: a handful of cache
    lines per key instead of the twenty or so a binary search over the whole run touches.
    """

    __slots__ = ("keys", "places", "n", "table", "shift", "steps", "dead", "oldest")

    def __init__(self, keys: np.ndarray, places: np.ndarray, n: int, oldest: int) -> None:
        """Takes over ``keys`` and ``places`` (``n + PAD`` long, the first ``n`` filled)."""
        keys[n:] = _END
        places[n:] = 0
        self.keys, self.places, self.n = keys, places, n
        self.dead = 0  # entries killed in place since the run was written
        self.oldest = oldest  # a bucket's first place: no held entry in the run is older
        self.table = None
        if n >= RADIX_MIN:
            bits = (n // KEYS_PER_SLICE).bit_length() - 1
            shift = _U64(64 - bits)
            table = keys[:n].searchsorted(np.arange(1 << bits, dtype=_U64) << shift)
            widest = int(max(np.diff(table).max(), n - table[-1]))
            if widest < PAD:  # else (keys far from uniform) plain binary search
                self.table, self.shift, self.steps = table, shift, widest.bit_length()

    @classmethod
    def of(cls, keys: np.ndarray, places: np.ndarray, oldest: int) -> "_Run":
        n = len(keys)
        k, p = np.empty(n + PAD, _U64), np.empty(n + PAD, _U64)
        k[:n], p[:n] = keys, places
        return cls(k, p, n, oldest)

    def find(self, q: np.ndarray) -> np.ndarray:
        """For each hash, the index of its entry if the run has one (else where it would go)."""
        if self.table is None:
            return self.keys.searchsorted(q)
        keys = self.keys
        pos = self.table.take((q >> self.shift).view(np.int64))  # shifted below 2**63: the view is exact
        below = np.empty(len(q), bool)
        probe = np.empty(len(q), _U64)
        step = 1 << (self.steps - 1)
        while step:  # pos moves past every key below q; the slice's end bounds how far it goes
            np.take(keys[step - 1:], pos, out=probe)
            np.less(probe, q, out=below)
            np.add(pos, step, out=pos, where=below)
            step >>= 1
        return pos

    def nbytes(self) -> int:
        n = sys.getsizeof(self) + _array_bytes(self.keys) + _array_bytes(self.places)
        return n + (_array_bytes(self.table) if self.table is not None else 0)


class DedupIndex:
    def __init__(self, window: float, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError(f"dedup index needs window > 0 and max_keys >= 1, got {window!r}, {max_keys!r}")
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._bucket_seconds = max(window / BUCKETS_PER_WINDOW, 0.001)
        self._origin: int | None = None  # absolute bucket id of relative bucket 0
        self._evicted_below = 1  # relative buckets below this are dropped (so a dead place, 0, never counts)
        self._seq = 0  # the last add sequence handed out
        self._seq_limit = 1 << _SEQ_BITS
        self._rel_limit = (1 << (64 - _SEQ_BITS)) - 1
        self._runs: list[_Run] = []  # oldest (and biggest) first
        self._entries = 0  # entries in all runs, garbage included
        self._live = 0
        self._counts: dict[int, int] = {}  # relative bucket -> held keys
        self._count_order: list[int] = []  # the buckets of _counts, ascending
        # Trim candidates, oldest place first: every held place <= _trim_max is among them, as
        # (place, run in _trim_runs, index in that run). Dropped when one of those runs is rewritten.
        self._trim_places: np.ndarray | None = None
        self._trim_run: np.ndarray | None = None
        self._trim_pos: np.ndarray | None = None
        self._trim_runs: list[_Run] = []
        self._trim_at = 0
        self._trim_max = -1

    def __len__(self) -> int:
        return self._live

    def _bucket(self, at: float) -> int:
        return int(at // self._bucket_seconds)

    def _cutoff(self) -> np.uint64:
        """The smallest place still inside the window."""
        rel = self._bucket(self._clock() - self.window) - self._origin
        return _U64(max(rel, self._evicted_below) << _SEQ_BITS)

    # -- lookups ----------------------------------------------------------------------------------

    def contains(self, h: int) -> bool:
        if not self._runs:
            return False
        cut, k = int(self._cutoff()), _U64(h)  # searchsorted given a Python int would convert the whole run
        for run in self._runs:
            i = run.keys.searchsorted(k)
            if run.keys.item(i) == h and run.places.item(i) >= cut:
                return True
        return False

    def contains_many(self, hashes: Iterable[int] | np.ndarray) -> np.ndarray:
        """``contains`` for each hash at once: a numpy bool array in the same order."""
        q = _as_u64(hashes)
        out = np.zeros(len(q), bool)
        if not self._runs or not len(q):
            return out
        cut = self._cutoff()
        for run in self._runs:
            i = run.find(q)
            hit = run.keys[i] == q
            hit &= run.places[i] >= cut
            out |= hit
        return out

    # -- adding -----------------------------------------------------------------------------------

    def add_many(self, hashes: Iterable[int] | np.ndarray, at: float | None = None) -> None:
        """Remember hashes as delivered at ``at`` (journal replay passes the original time)."""
        now = self._clock()
        at = now if at is None else at
        if at < now - self.window:
            return
        if self._origin is None:
            self._origin = self._bucket(now - self.window) - 1
        rel = self._bucket(at) - self._origin
        if rel >= self._rel_limit:
            self._rebase()
            rel = self._bucket(at) - self._origin
        if rel < self._evicted_below:  # only if the clock went back
            return
        q = _as_u64(hashes)
        n = len(q)
        if n:
            if self._seq + n >= self._seq_limit:
                self._renumber()
            # A key twice in one add takes the place of its last occurrence.
            keys, from_end = np.unique(q[::-1], return_index=True)
            places = (self._seq + n - from_end).astype(_U64)
            places |= _U64(rel << _SEQ_BITS)
            self._seq += n
            keys, places = self._displace(keys, places, rel)
            if len(keys):
                self._add_run(keys, places, rel)
        self.evict()

    def _displace(self, keys: np.ndarray, places: np.ndarray, rel: int) -> tuple[np.ndarray, np.ndarray]:
        """Kill the held entries of keys added again; drop the keys held with a newer time."""
        floor = _U64(self._evicted_below << _SEQ_BITS)
        keep = None
        for run in self._runs:
            i = run.find(keys)
            old = run.places[i]
            hit = run.keys[i] == keys
            hit &= old >= floor
            if not hit.any():
                continue
            newer = hit & ((old >> _U64(_SEQ_BITS)) > rel)
            if newer.any():
                hit &= ~newer
                keep = ~newer if keep is None else keep & ~newer
            if hit.any():
                self._forget(old[hit])
                run.places[i[hit]] = 0
                run.dead += int(hit.sum())
        if keep is not None:
            keys, places = keys[keep], places[keep]
        return keys, places

    def _forget(self, places: np.ndarray) -> None:
        """Held entries at ``places`` are gone: count them out of their buckets."""
        buckets, n = np.unique(places >> _U64(_SEQ_BITS), return_counts=True)
        counts = self._counts
        for b, c in zip(buckets.tolist(), n.tolist()):
            counts[b] -= c
        self._live -= len(places)

    def _add_run(self, keys: np.ndarray, places: np.ndarray, rel: int) -> None:
        n = len(keys)
        if rel in self._counts:
            self._counts[rel] += n
        else:
            self._counts[rel] = n
            bisect.insort(self._count_order, rel)
        self._live += n
        self._entries += n
        if self._trim_max >= 0 and int(places.min()) <= self._trim_max:
            self._drop_trim_candidates()  # an add into an older bucket, ahead of some candidates
        self._runs.append(_Run.of(keys, places, rel << _SEQ_BITS))
        self._settle()

    def _settle(self) -> None:
        runs = self._runs
        while len(runs) > 1 and (runs[-2].n < MIN_RUN or runs[-2].n <= FANOUT * runs[-1].n):
            b = runs.pop()
            runs[-1] = self._merge(runs[-1], b)

    def _held(self, run: _Run) -> tuple[np.ndarray, np.ndarray]:
        keys, places = run.keys[:run.n], run.places[:run.n]
        floor = self._evicted_below << _SEQ_BITS
        if run.dead or run.oldest < floor:
            held = places >= _U64(floor)
            if not held.all():
                keys, places = keys[held], places[held]
        return keys, places

    def _merge(self, a: _Run, b: _Run) -> _Run:
        """One run of the held entries of both (no key is held in both)."""
        ka, pa = self._held(a)
        kb, pb = self._held(b)
        if len(ka) < len(kb):
            a, b, ka, pa, kb, pb = b, a, kb, pb, ka, pa
        total = len(ka) + len(kb)
        oldest = max(min(a.oldest, b.oldest), self._evicted_below << _SEQ_BITS)
        self._entries -= a.n + b.n - total
        self._retire(a)
        self._retire(b)
        keys, places = np.empty(total + PAD, _U64), np.empty(total + PAD, _U64)
        if total < 2048:  # small: a stable sort of the two sorted halves is one linear merge
            both = np.concatenate([ka, kb])
            order = both.argsort(kind="stable")
            np.take(both, order, out=keys[:total])
            np.take(np.concatenate([pa, pb]), order, out=places[:total])
            return _Run(keys, places, total, oldest)
        at_b = a.find(kb) if len(ka) == a.n else ka.searchsorted(kb)
        at_b += np.arange(len(kb))
        at_a = np.ones(total, bool)
        at_a[at_b] = False
        keys[at_b], places[at_b] = kb, pb
        keys[:total][at_a], places[:total][at_a] = ka, pa
        return _Run(keys, places, total, oldest)

    def _retire(self, run: _Run) -> None:
        """``run`` is being rewritten: trim candidates that point into it are no longer good."""
        if any(r is run for r in self._trim_runs):
            self._drop_trim_candidates()

    # -- forgetting -------------------------------------------------------------------------------

    def evict(self) -> None:
        """Drop what is out of the window, then the oldest keys while more than ``max_keys`` are held."""
        if self._origin is None:
            return
        oldest_valid = self._bucket(self._clock() - self.window) - self._origin
        if oldest_valid > self._evicted_below:
            order, counts = self._count_order, self._counts
            j = bisect.bisect_left(order, oldest_valid)
            for b in order[:j]:
                self._live -= counts.pop(b)
            del order[:j]
            self._evicted_below = oldest_valid
        if self._live > self.max_keys:
            self._trim(self._live - self.max_keys)
        if self._entries - self._live > max(self._live // 4, MIN_RUN):
            self._compact()

    def _trim(self, excess: int) -> None:
        """Forget the ``excess`` held keys with the oldest places."""
        while excess > 0:
            if self._trim_places is None or self._trim_at >= len(self._trim_places):
                self._find_trim_candidates(excess)
            start = self._trim_at
            self._trim_at = end = min(start + excess, len(self._trim_places))
            places, which, pos = self._trim_places[start:end], self._trim_run[start:end], self._trim_pos[start:end]
            held = places >= _U64(self._evicted_below << _SEQ_BITS)
            gone = []
            for i, run in enumerate(self._trim_runs):
                mine = held & (which == i) if len(self._trim_runs) > 1 else held
                p, at = places[mine], pos[mine]
                same = run.places[at] == p  # still that entry: not moved or trimmed since
                run.places[at[same]] = 0
                run.dead += int(same.sum())
                gone.append(p[same])
            gone = np.concatenate(gone)
            if len(gone):
                self._forget(gone)
                excess -= len(gone)

    def _find_trim_candidates(self, excess: int) -> None:
        """The oldest held entries, about 1/32 of them: a place threshold from a sample, then one scan."""
        live = self._live
        want = max(excess, 1024, live // 32)
        floor = _U64(self._evicted_below << _SEQ_BITS)
        limit = _END  # places below this are taken
        if want < live:
            stride = max(1, self._entries // 8192)
            sample = np.concatenate([run.places[:run.n:stride] for run in self._runs])
            sample = np.sort(sample[sample >= floor])
            k = len(sample) * want // live
            if k < len(sample):
                limit = sample[k] + _U64(1)
        runs, places, which, pos = [], [], [], []
        for run in self._runs:
            p = run.places[:run.n]
            at = np.flatnonzero((p >= floor) & (p < limit))
            if len(at):
                places.append(p[at])
                pos.append(at)
                which.append(np.full(len(at), len(runs), np.int16))
                runs.append(run)
        places = np.concatenate(places)
        order = np.argsort(places)
        self._trim_places = places[order]
        self._trim_run = np.concatenate(which)[order]
        self._trim_pos = np.concatenate(pos)[order]
        self._trim_runs, self._trim_at = runs, 0
        self._trim_max = int(self._trim_places[-1])

    def _drop_trim_candidates(self) -> None:
        self._trim_places = self._trim_run = self._trim_pos = None
        self._trim_runs, self._trim_at, self._trim_max = [], 0, -1

    def _compact(self) -> None:
        """Rewrite the runs without their garbage."""
        old, self._runs = self._runs, []
        for run in old:
            keys, places = self._held(run)
            if len(keys) < run.n:
                self._retire(run)
                if not len(keys):
                    continue
                run = _Run.of(keys, places, max(run.oldest, self._evicted_below << _SEQ_BITS))
            self._runs.append(run)
            self._settle()
        self._entries = sum(run.n for run in self._runs)

    # -- keeping the places in range --------------------------------------------------------------

    def _renumber(self) -> None:
        """Hand out add sequences from 1 again, keeping every held entry's order."""
        self._compact()
        if not self._runs:
            self._seq = 0
            return
        places = np.concatenate([run.places[:run.n] for run in self._runs])
        rank = np.empty(len(places), _U64)
        rank[np.argsort(places)] = np.arange(1, len(places) + 1, dtype=_U64)
        places = (places >> _U64(_SEQ_BITS) << _U64(_SEQ_BITS)) | rank
        start = 0
        for run in self._runs:
            run.places[:run.n] = places[start:start + run.n]
            start += run.n
        self._seq = len(places)
        self._drop_trim_candidates()

    def _rebase(self) -> None:
        """Move bucket 0 up to just before the window (after a long time running)."""
        self.evict()
        self._compact()
        shift = self._evicted_below - 1
        self._origin += shift
        self._evicted_below = 1
        for run in self._runs:
            run.places[:run.n] -= _U64(shift << _SEQ_BITS)
            run.oldest -= shift << _SEQ_BITS
        self._counts = {b - shift: c for b, c in self._counts.items()}
        self._count_order = [b - shift for b in self._count_order]
        self._drop_trim_candidates()

    # -- reporting --------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes this index holds now (arrays, their headers and the small Python structures)."""
        n = sys.getsizeof(self) + sys.getsizeof(self.__dict__) + sys.getsizeof(self._runs)
        n += sum(run.nbytes() for run in self._runs)
        n += sys.getsizeof(self._counts) + sys.getsizeof(self._count_order) + 64 * len(self._counts)
        for a in (self._trim_places, self._trim_run, self._trim_pos):
            if a is not None:
                n += _array_bytes(a)
        return n
