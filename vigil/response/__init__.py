"""The response engine: whether, when and how safely a remediation runs (DESIGN §5, issue 8).

Every safety rule is enforced here, in the core, for every remediator alike: the maturity gate, dry-run,
approvals bound to a plan, blast-radius caps, rate limits and circuit breakers, idempotency keys,
self-protection, and an audit record before every step.
"""
