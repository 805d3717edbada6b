"""Load, peak and failure tooling: destination emulators, event generators, locustfiles, the benchmark.

Installed as ``router.loadtest`` so ``router demo`` and the tests can start the emulators.
"""
