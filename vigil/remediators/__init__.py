"""Remediators: how Vigil changes a key, a node or a container. The contract is :mod:`.base`; whether and
when one runs is decided by the core (:mod:`vigil.response`), never by a remediator."""
