"""The package version, in a module of its own so that any layer can read it without importing
the package's facade (``pom_deploy/__init__.py``), which imports every layer."""

__version__ = "0.1.0"
