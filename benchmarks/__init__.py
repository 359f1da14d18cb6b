"""chimuf's benchmarks: each measures a speed against a baseline run in the same process.

`python -m benchmarks` runs them all (`nox -s bench`); README.md lists them and their targets.
"""
