"""Network helpers shared by the tests (a module, not a test file, so test files import it rather than each other)."""
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on once this returns (the OS picked it free)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
