"""One module per source format; each defines a :class:`~vigil.events.normalize.Normalizer` subclass.

They are registered lazily by name in :data:`vigil.events.normalize.normalizers`, not imported here.
"""
