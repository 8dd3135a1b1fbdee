"""The package version (one place: ``vitron.__version__`` and saved model folders read it)."""

__version__ = "0.5.1"
