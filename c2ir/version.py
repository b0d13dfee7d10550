"""The package version, in a module of its own so that library modules (the manifests of cache.py)
can read it without importing the package's public face."""

__version__ = "0.1.0"
