"""The NATS JetStream side: connection, consumers, publishers, streams, and the
JetStream implementations of the delivery ports (parking, dedup journal, dead letters)."""
