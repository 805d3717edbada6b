"""Ingest logic: route an event, plan a fetched batch."""
