"""chimuf's version, in a module of its own so that importing it pulls in nothing else.

The one place the version is written: pyproject.toml reads it from here (`dynamic`), and every
stage of a run records it (chimuf.core.environment.provenance).
"""

__version__ = "0.2.0"
