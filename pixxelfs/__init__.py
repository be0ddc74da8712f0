"""pixxelfs: a Pixxel imagery catalog as a read-only filesystem."""

__version__ = "0.1.0"
