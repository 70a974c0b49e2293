"""Lazy-vs-eager conformance over PyTorch's OpInfo database (``nox -s conformance``)."""
