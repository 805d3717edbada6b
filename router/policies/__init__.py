"""Send policies with an injected clock: circuit breaker, adaptive concurrency, rate limit, retry."""
