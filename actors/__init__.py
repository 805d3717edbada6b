"""The Ray actors: thin wrappers that own a plain object from ``router`` and move batches.

Installed as ``router.actors``.
"""

from .destination_worker import DestinationWorker
from .ingest import IngestActor

__all__ = ["DestinationWorker", "IngestActor"]
