"""chimuf: a complete, reproducible CNN study for binary image classification, and its report.

Importing chimuf imports neither TensorFlow nor matplotlib: the heavy libraries are imported
inside the functions that need them, so `chimuf --help` and `chimuf report` start instantly.
"""

__version__ = "0.1.0"
