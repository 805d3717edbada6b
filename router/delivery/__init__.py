"""One destination shard's delivery: dedup, intake and batching, send policy, park and replay."""
