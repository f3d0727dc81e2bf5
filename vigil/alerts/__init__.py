"""Alerting: a durable outbox, one worker per sink, storm grouping, redaction, and the sinks (issue 9).

The contract between the core and the sinks is :mod:`.model`; everything that makes delivery reliable
(persistence before sending, retries honouring ``Retry-After``, rate limits, dead letters) is the core's.
"""
