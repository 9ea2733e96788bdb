"""The listening TCP sockets of the commands people and operators reach (`ringfence serve` and its `--gateways`
processes and standby status page, `ringfence identity serve`, `ringfence signer run`): one function, `listen_on`.

A port held on one address family only is half held. `--host 0.0.0.0` bound IPv4 alone: another local user could
listen on [::]:PORT or [::1]:PORT, and clients that resolve `localhost` to ::1 first (curl, browsers, httpx) reached
them instead of the exchange, with their requests and session cookies (intruder review of #21 and #22). `--host ::1`
left 127.0.0.1:PORT free, and `--host ::` covered IPv4 or not as the machine's `net.ipv6.bindv6only` said. So for a
wildcard or loopback host of either family `listen_on` takes the same port on the other family's twin too
(`twin_of`): 0.0.0.0 and ::, 127.0.0.1 (and localhost) and ::1; every IPv6 socket with IPV6_V6ONLY set, so that what
is held never depends on a sysctl. A twin that someone else holds refuses the start like a busy port, naming
--host, --port, the address and, where /proc/net shows it, the user and process listening there
(`ListenError`). Only a machine without the other family (EAFNOSUPPORT, EADDRNOTAVAIL: nobody can listen there
either) starts on the one, with a warning.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Callable, Collection

__all__ = ["LISTEN_BACKLOG", "ListenError", "listen_on", "twin_of", "url_host"]

#: the listening sockets' queue of connections not yet accepted (uvicorn's default)
LISTEN_BACKLOG = 2048

#: each wildcard or loopback address and its other family's twin
_TWINS: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {
    ipaddress.ip_address("127.0.0.1"): "::1", ipaddress.ip_address("::1"): "127.0.0.1",
    ipaddress.ip_address("0.0.0.0"): "::", ipaddress.ip_address("::"): "0.0.0.0"}
#: what a twin is, as the refusal says it
_WHAT = {"::1": "IPv6 loopback, where clients that resolve localhost to ::1 connect",
         "127.0.0.1": "IPv4 loopback, where clients that resolve localhost to 127.0.0.1 connect",
         "::": "IPv6 wildcard, every IPv6 address of this machine",
         "0.0.0.0": "IPv4 wildcard, every IPv4 address of this machine"}


class ListenError(OSError):
    """A listening socket the command cannot have; `str()` is the whole line for the operator."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def twin_of(host: str) -> str | None:
    """The other family's address `host` stands for too, or None: 127.0.0.1 or localhost → ::1, ::1 → 127.0.0.1,
    0.0.0.0 (or "") → ::, :: → 0.0.0.0 (any spelling of these addresses); any other host has no twin."""
    if host == "localhost":
        return "::1"
    if host == "":
        return "::"
    ip = _ip(host)
    return _TWINS.get(ip) if ip is not None else None


def url_host(host: str) -> str:
    """`host` as a URL's host: `localhost` for a loopback host of either family (the node holds both), an IPv6
    address in brackets."""
    if host == "localhost" or twin_of(host) in ("::1", "127.0.0.1"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_on(host: str, port: int, warn: Callable[[str], None]) -> list[socket.socket]:
    """Listening sockets on `host`:`port` and, for a wildcard or loopback host, on its other family's twin
    (`twin_of`); ListenError naming --host and --port if the command cannot have them all (none is left open).
    `warn` gets one line when the machine lacks the twin's family (then the one socket is returned).

    Each listens at once, not merely bound: a bound socket that does not listen shares its port with any other
    socket that sets SO_REUSEADDR, and whichever listens first gets it. `ringfence serve` calls this before it
    recovers or writes anything and keeps the sockets until it ends (api/serve.py)."""
    try:
        first = _listen(host, port)
    except OSError as err:
        raise _refusal(err, host, host, port, []) from None
    twin = twin_of(host)
    if twin is None:
        return [first]
    try:
        return [first, _listen(twin, port)]
    except OSError as err:
        if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            family = "IPv6" if ":" in twin else "IPv4"
            warn(f"--host {host}: no {family} on this machine ({err.strerror or err} on {_shown(twin, port)}): "
                 f"listening on {_shown(host, port)} only (nobody can listen on {_shown(twin, port)} either)")
            return [first]
        refusal = _refusal(err, twin, host, port, [first])
        first.close()
        raise refusal from None


def _listen(address: str, port: int) -> socket.socket:
    """One socket listening on address:port (IPv6 only for an IPv6 address)."""
    v6 = ":" in address
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart binds despite TIME_WAIT connections
        if v6:  # never IPv4 too by the sysctl's default: the IPv4 twin is a socket of its own
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _refusal(err: OSError, address: str, host: str, port: int, ours: list[socket.socket]) -> ListenError:
    """The line that refuses the start: --host, --port, the address and why; for a busy port, who holds it
    (`holders`, leaving out `ours`, the sockets this call already had)."""
    where = _shown(address, port)
    if address != host:
        where += f" ({_WHAT[address]}; --host {host} holds it too)"
    reason = err.strerror or str(err)
    if err.errno == errno.EADDRINUSE:
        reason += f"; {holders(port, {os.fstat(s.fileno()).st_ino for s in ours})}"
    return ListenError(err.errno or 0, f"--host {host} --port {port}: cannot listen on {where}: {reason}")


# ---------------------------------------------------------------- who holds a port (best effort, Linux /proc)


def holders(port: int, ours: Collection[int] = ()) -> str:
    """Who listens on TCP `port` on this machine, as a sentence: each listening socket's address, user and, where
    this process may see it, the process (/proc/net/tcp, tcp6, /proc/PID/fd); not the sockets whose inodes are
    `ours`."""
    found: list[tuple[str, int, int]] = []  # (address, uid, inode)
    tables = 0
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue  # (no IPv6 here, or no /proc)
        tables += 1
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # LISTEN
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and int(fields[9]) not in ours:
                found.append((_shown(_proc_address(address, v6), port), int(fields[7]), int(fields[9])))
    if not tables:
        return "who holds it is not shown on this system (no /proc/net/tcp)"
    if not found:
        return "no socket listens there (one bound without listening, or in another network namespace, holds it)"
    pids = _pids_of({inode for _, _, inode in found})
    return "held by " + ", ".join(f"{where} of {_user(uid)}{pids.get(inode, '')}" for where, uid, inode in found)


def _proc_address(text: str, v6: bool) -> str:
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":  # each 32-bit word is printed in host order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw)


def _user(uid: int) -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _pids_of(inodes: set[int]) -> dict[int, str]:
    """`, pid N (command)` for each socket inode whose process's descriptors this process may read."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    out: dict[int, str] = {}
    for pid in (p for p in os.listdir("/proc") if p.isascii() and p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # another user's process, or one that ended
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue  # closed meanwhile (the listing's own descriptor among them)
            if inode is not None and inode not in out:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:80]
                except OSError:
                    command = "?"
                out[inode] = f", pid {pid} ({command})"
    return out
