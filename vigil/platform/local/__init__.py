"""The local, single-machine platform: the embedded default behind the :mod:`vigil.platform` interfaces.

Everything here is real cryptography over local files: a master key (:mod:`.masterkey`) seals key material
at rest, the key vault (:mod:`.keyvault`) keeps versioned keys in SQLite, release policies
(:mod:`.policy`) and attestation tokens (:mod:`.tokens`) decide who gets an exportable key, and
:mod:`.release` wraps it to the attested node's own public key. Nothing is re-exported here, so importing
the package stays cheap; import the module you need.
"""
