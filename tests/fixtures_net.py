"""Network helpers shared by the tests (a module, not a test file, so test files import it rather than each other)."""
from contracts.net import free_port  # the one free-port picker, shared with the local runtime and the benchmarks

__all__ = ["free_port"]
