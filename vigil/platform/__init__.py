"""The platform Vigil protects and acts on: key vault, secure storage, compute, attestation.

Each is a typed async interface (:mod:`.keyvault`, :mod:`.storage`, :mod:`.compute`, :mod:`.attestation`)
with one error tree (:mod:`.errors`) and one way to report changes (:mod:`.events`). Two families implement
them: :mod:`vigil.platform.local`, a real single-machine confidential platform and the embedded default, and
``vigil.platform.azure`` over the Azure SDKs (issue 11). Remediators and training nodes are written against
the interfaces only, so they run unchanged on both.

Every call names the calling *principal*; the provider's access policy decides. The local platform is served
to other processes (training nodes, the CLI) by :mod:`vigil.platform.service` over loopback HTTP with a
token per principal.
"""
