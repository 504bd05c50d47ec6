"""mlscale: one package that takes an ML model from a laptop to millions of users.

Each part lives in its own sub-package (serving, cache, storage, features, streams, monitoring,
vision, gateway) and shows its public face in its ``__init__``. See docs/architecture.md.
"""

__version__ = "0.1.0"
