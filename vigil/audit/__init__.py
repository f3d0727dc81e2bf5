"""The tamper-evident audit log: every decision Vigil takes, provable afterwards, and no action unaudited.

What it guarantees:

* **Append-only hash chain.** Each record (seq, wall time and monotonic time, actor, kind, subject,
  details) is hashed with the previous record's hash (:mod:`.record`); editing, deleting or reordering a
  record breaks the chain, and ``vigil audit verify`` names the first bad seq and the kind of damage.
* **Signed checkpoints off the box.** Every N records or T seconds the head is signed with an Ed25519 key
  that only the key vault holds and exported to checkpoint sinks (:mod:`.checkpoint`); against them a cut
  tail or a wholesale replacement by a shorter valid chain is caught too.
* **Fail closed.** An append that cannot be made durable (disk full, I/O error, every sink down) raises
  :class:`AuditUnavailableError` with nothing written; the action that needed it must not run, and the log
  reports itself degraded until an append succeeds again (:mod:`.log`).
* **Crash safe.** One SQLite transaction per append (``synchronous=FULL`` by default, in its own database):
  after a SIGKILL or power loss the log is a prefix of what was intended, never a torn record.
* **No secrets.** Keys and strings that look like secrets are refused; a value an investigator must match
  is stored only as a keyed HMAC (``vigil audit hmac VALUE`` computes it).
"""

# No imports here: the submodules load what they need (cryptography, SQLite), so that importing the
# package for `vigil audit --help` costs nothing. Import from vigil.audit.log, .record, .checkpoint, .verify.
