"""peak-router: NATS JetStream in, ERP / marketplace / carrier out, exactly once per destination."""

__version__ = "0.1.0"
