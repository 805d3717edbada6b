"""The dedup index in simulated time: the window, the size bound (oldest keys first, never fewer
than the bound), out-of-order journal replay and keys added again; batch lookups and the memory
a held key costs."""

import random
import tracemalloc

import numpy as np
import pytest

from router.delivery import dedup_index
from router.delivery.dedup_index import DedupIndex
from router.delivery.key_hash import key_hash

WINDOW = 256.0  # 1 s buckets


class Clock:
    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def index(max_keys: int = 1000, window: float = WINDOW) -> tuple[DedupIndex, Clock]:
    clock = Clock()
    return DedupIndex(window=window, max_keys=max_keys, clock=clock), clock


def held(idx: DedupIndex, keys) -> set[int]:
    return {k for k in keys if idx.contains(k)}


def test_a_key_is_known_inside_the_window_and_forgotten_after_it():
    idx, clock = index()
    idx.add_many([key_hash("a")])
    clock.t += WINDOW - 2
    assert idx.contains(key_hash("a"))
    clock.t += 3
    assert not idx.contains(key_hash("a"))
    idx.evict()
    assert len(idx) == 0


def test_a_burst_above_the_bound_in_one_bucket_keeps_exactly_the_newest_keys():
    idx, clock = index(max_keys=1000)
    idx.add_many(range(1, 3001))
    assert len(idx) == 1000
    assert held(idx, range(1, 3001)) == set(range(2001, 3001))


def test_a_burst_in_many_small_adds_keeps_exactly_the_newest_keys():
    idx, clock = index(max_keys=1000)
    for start in range(1, 3001, 7):  # same bucket, 429 adds
        idx.add_many(range(start, min(start + 7, 3001)))
        clock.t += 0.001
    assert len(idx) == 1000
    assert held(idx, range(1, 3001)) == set(range(2001, 3001))


def test_the_bound_cuts_a_bucket_partway_and_keeps_the_newer_buckets_whole():
    idx, clock = index(max_keys=250)
    for second in range(3):  # 100 keys in each of three buckets
        idx.add_many(range(second * 100, second * 100 + 100))
        clock.t += 1
    assert held(idx, range(300)) == set(range(50, 300))
    idx.add_many(range(300, 360))
    assert held(idx, range(360)) == set(range(110, 360))
    assert len(idx) == 250


def test_keys_replayed_out_of_order_go_to_the_bucket_of_their_time():
    idx, clock = index(max_keys=1000)
    now = clock.t
    idx.add_many(range(100, 110), at=now)
    idx.add_many(range(0, 10), at=now - 100)  # journal replay: an older message after a newer one
    assert held(idx, range(110)) == set(range(10)) | set(range(100, 110))
    clock.t = now - 100 + WINDOW + 1.5  # the older keys' window is over, the newer keys' is not
    assert held(idx, range(110)) == set(range(100, 110))
    idx.evict()
    assert len(idx) == 10


def test_out_of_order_keys_are_the_oldest_when_the_bound_trims():
    idx, clock = index(max_keys=15)
    now = clock.t
    idx.add_many(range(100, 110), at=now)
    idx.add_many(range(0, 10), at=now - 100)
    assert held(idx, range(110)) == set(range(5, 10)) | set(range(100, 110))


def test_a_replayed_key_older_than_the_window_is_not_added():
    idx, clock = index()
    idx.add_many([1], at=clock.t - WINDOW - 5)
    assert not idx.contains(1) and len(idx) == 0


def test_a_key_added_again_later_lives_in_the_newer_bucket():
    idx, clock = index(max_keys=100)
    idx.add_many(range(100))
    clock.t += 10
    idx.add_many([0, 1, 2])  # delivered again (after a replay): now the newest
    assert len(idx) == 100, "the stale entries must not count toward the bound"
    assert held(idx, range(100)) == set(range(100))
    idx.add_many(range(100, 150))  # 50 more: the 50 oldest go, and 0, 1, 2 are not among them
    assert held(idx, range(150)) == {0, 1, 2} | set(range(53, 150))
    clock.t += WINDOW - 5  # the first bucket expires, the re-added keys do not
    assert held(idx, range(150)) == {0, 1, 2} | set(range(100, 150))


def test_a_stale_entry_does_not_evict_the_live_key_when_its_bucket_expires():
    idx, clock = index()
    idx.add_many([7, 8])
    clock.t += 100
    idx.add_many([7])
    clock.t += WINDOW - 50  # the first bucket is out of the window
    idx.evict()
    assert idx.contains(7) and not idx.contains(8)
    assert len(idx) == 1


def test_a_key_added_again_in_the_same_bucket_takes_the_place_of_its_latest_add():
    idx, clock = index(max_keys=2)
    idx.add_many([1, 2])
    idx.add_many([1])  # same slice of time, after 2
    idx.add_many([3])
    assert held(idx, [1, 2, 3]) == {1, 3}
    idx.add_many([4])
    assert held(idx, [1, 2, 3, 4]) == {3, 4}


def test_a_key_twice_in_one_add_counts_once():
    idx, clock = index(max_keys=3)
    idx.add_many([1, 2, 1, 3])
    assert len(idx) == 3 and held(idx, [1, 2, 3]) == {1, 2, 3}
    idx.add_many([4])
    assert held(idx, [1, 2, 3, 4]) == {1, 3, 4}


def test_a_replay_with_an_older_time_does_not_shorten_a_key_life():
    idx, clock = index()
    idx.add_many([5])
    idx.add_many([5], at=clock.t - 100)
    clock.t += WINDOW - 2
    assert idx.contains(5)


def test_a_key_expired_but_not_yet_evicted_can_be_added_again():
    idx, clock = index()
    idx.add_many([9])
    clock.t += WINDOW + 2
    assert not idx.contains(9)
    idx.add_many([9])
    assert idx.contains(9) and len(idx) == 1


def test_bad_window_or_bound_is_refused():
    with pytest.raises(ValueError, match="max_keys"):
        DedupIndex(window=10, max_keys=0)
    with pytest.raises(ValueError, match="window"):
        DedupIndex(window=0, max_keys=10)


class ReferenceIndex:
    """The same promise, written the slow and obvious way: each key's place is (time bucket, add order)."""

    def __init__(self, window: float, max_keys: int, clock: Clock) -> None:
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self.bucket_seconds = window / 256
        self.place: dict[int, tuple[int, int]] = {}
        self.seq = 0

    def cutoff(self) -> int:
        return int((self.clock() - self.window) // self.bucket_seconds)

    def contains(self, h: int) -> bool:
        return h in self.place and self.place[h][0] >= self.cutoff()

    def add_many(self, hashes, at=None) -> None:
        at = self.clock() if at is None else at
        if at < self.clock() - self.window:
            return
        b = int(at // self.bucket_seconds)
        for h in hashes:
            self.seq += 1
            if h not in self.place or self.place[h][0] <= b:
                self.place[h] = (b, self.seq)
        self.place = {h: p for h, p in self.place.items() if p[0] >= self.cutoff()}
        while len(self.place) > self.max_keys:
            del self.place[min(self.place, key=self.place.__getitem__)]


@pytest.mark.parametrize("seed", range(20))
def test_random_adds_replays_and_time_agree_with_the_reference(seed):
    rng = random.Random(seed)
    clock = Clock()
    max_keys = rng.choice([5, 20, 60])
    idx = DedupIndex(WINDOW, max_keys, clock)
    ref = ReferenceIndex(WINDOW, max_keys, clock)
    universe = range(rng.choice([30, 100, 300]))
    for _ in range(400):
        hashes = [rng.choice(universe) for _ in range(rng.randint(0, 25))]
        at = None if rng.random() < 0.7 else clock.t - rng.uniform(0, WINDOW * 1.1)
        idx.add_many(hashes, at)
        ref.add_many(hashes, at)
        clock.t += rng.choice([0.0, 0.01, 0.5, 3.0, 40.0])
        assert held(idx, universe) == {h for h in universe if ref.contains(h)}
        assert len(idx) <= max_keys
        idx.evict()
        assert len(idx) == sum(1 for h in ref.place if ref.contains(h))


def test_contains_many_answers_as_contains_does():
    idx, clock = index(max_keys=1000)
    idx.add_many(range(0, 600, 2))
    clock.t += 10
    idx.add_many([2**64 - 1, 5])  # the top of the hash range is a key like any other
    probe = list(range(700)) + [2**64 - 1, 2**64 - 2]
    got = idx.contains_many(probe)
    assert got.dtype == bool
    assert got.tolist() == [idx.contains(h) for h in probe]
    assert got.tolist() == [h < 600 and h % 2 == 0 or h in (5, 2**64 - 1) for h in probe]
    assert idx.contains_many(np.array(probe, dtype=np.uint64)).tolist() == got.tolist()
    assert idx.contains_many([]).tolist() == []
    clock.t += WINDOW - 5  # the first add's bucket is out of the window, the second's is not
    assert idx.contains_many(probe).tolist() == [h in (5, 2**64 - 1) for h in probe]


def test_an_empty_index_contains_nothing():
    idx, _ = index()
    assert idx.contains_many([1, 2**64 - 1]).tolist() == [False, False]
    assert not idx.contains(1) and len(idx) == 0


@pytest.fixture
def small_runs(monkeypatch):
    """Runs, merges and radix tables at a few hundred keys, so the random tests reach them."""
    monkeypatch.setattr(dedup_index, "RADIX_MIN", 64)
    monkeypatch.setattr(dedup_index, "MIN_RUN", 16)
    monkeypatch.setattr(dedup_index, "KEYS_PER_SLICE", 2)


@pytest.mark.parametrize("seed", range(12))
def test_merged_runs_and_batch_lookups_agree_with_the_reference(seed, small_runs):
    rng = random.Random(1000 + seed)
    clock = Clock()
    max_keys = rng.choice([100, 400])
    idx = DedupIndex(WINDOW, max_keys, clock)
    ref = ReferenceIndex(WINDOW, max_keys, clock)
    if seed % 3 == 0:  # add sequences and buckets run out of their 32 bits after long uptimes
        idx._seq_limit, idx._rel_limit = 20 * max_keys, 2000
    universe = [rng.getrandbits(64) for _ in range(max_keys * 3)]  # spread like real hashes
    for _ in range(150):
        hashes = [rng.choice(universe) for _ in range(rng.choice([0, 1, 7, 60, 250]))]
        at = None if rng.random() < 0.8 else clock.t - rng.uniform(0, WINDOW * 1.1)
        idx.add_many(hashes, at)
        ref.add_many(hashes, at)
        clock.t += rng.choice([0.0, 0.01, 0.5, 3.0, 40.0])
        assert idx.contains_many(universe).tolist() == [ref.contains(h) for h in universe]
        assert len(idx) <= max_keys
        idx.evict()
        assert len(idx) == sum(1 for h in ref.place if ref.contains(h))


def test_places_stay_in_order_when_sequences_and_buckets_start_over(small_runs):
    idx, clock = index(max_keys=300)
    idx._seq_limit, idx._rel_limit = 1000, 600
    for second in range(3000):  # far past both limits
        idx.add_many([second * 10 + i for i in range(5)])
        clock.t += 1
    assert len(idx) == 300  # the newest: 60 seconds of 5 keys
    assert {h for h in range(2900 * 10, 3000 * 10) if idx.contains(h)} == {
        second * 10 + i for second in range(2940, 3000) for i in range(5)}


def test_a_million_keys_take_at_most_32_bytes_each():
    rng = np.random.default_rng(7)
    clock = Clock()

    def add(batches: int) -> None:
        for _ in range(batches):
            idx.add_many(rng.integers(0, 2**64 - 1, 10_000, dtype=np.uint64, endpoint=True))
            clock.t += 5

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idx = DedupIndex(window=3600, max_keys=1_000_000, clock=clock)
        add(100)
        filled = tracemalloc.get_traced_memory()[0] - before
        add(60)  # at the bound: every add trims as many of the oldest keys
        churned = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(idx) == 1_000_000
    assert filled / 999_000 <= 32 and churned / len(idx) <= 32, (filled, churned)
    assert abs(idx.memory_bytes() - churned) <= 0.05 * churned, "memory_bytes() is what the index holds"
