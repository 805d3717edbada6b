"""The Ray actors: thin wrappers that own a plain object from ``router`` and move batches.

Installed as ``router.actors``. Each actor is imported from its own module, so an actor's
process loads only what it runs (an ingest actor has no use for the sink side and its numpy).
"""
