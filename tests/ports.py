"""A free TCP port on the loopback for torchrun's rendezvous, so concurrent test runs never collide."""
import socket


def free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
