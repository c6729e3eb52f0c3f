"""No traffic beyond loopback: connections and name lookups of other hosts fail, and are written to the file
$NL_TEST_NETWORK_LOG names. Installed in the test process by test_hub.py and, through
tests/loopback_only/sitecustomize.py on PYTHONPATH, in every Python the tests start."""
import ipaddress
import os
import socket


def _loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost


def _refuse(what: str):
    log = os.environ.get("NL_TEST_NETWORK_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {what}\n")
    raise ConnectionRefusedError(f"the tests allow no traffic beyond loopback: {what}")


def install(setattr=setattr):
    """Patch socket's connect and getaddrinfo (`setattr` may be pytest's monkeypatch.setattr, to undo it)."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse(f"connect {address}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refuse(f"connect {address}")
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            _refuse(f"lookup {host}")
        return getaddrinfo(host, *args, **kwargs)

    setattr(socket.socket, "connect", guarded_connect)
    setattr(socket.socket, "connect_ex", guarded_connect_ex)
    setattr(socket, "getaddrinfo", guarded_getaddrinfo)
