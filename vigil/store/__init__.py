"""The durable store: the event log, findings, dead letters, source offsets and detector snapshots.

The embedded default is SQLite in WAL mode (``sqlite.py``); the interface is what the pipeline needs, so a
server-backed store can replace it.
"""
