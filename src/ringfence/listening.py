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
either) starts on the one, with a warning. A host name or another spelling (`LOCALHOST`, `127.1`, `0`) is
resolved once, to every address it has, and each of those holds its twin (`_addresses`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Callable, Collection

__all__ = ["LISTEN_BACKLOG", "ListenError", "free_port", "listen_on", "twin_of", "url_host"]

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
    """Listening sockets on every address `host` stands for, on `port`, and, for a wildcard or loopback address, on
    its other family's twin (`twin_of`); ListenError naming --host and --port if the command cannot have them all
    (none is left open). `warn` gets one line for each address the machine lacks (a twin's family, or one of the
    addresses a host name resolves to): nobody can listen there either, so the others are served.

    A host name is resolved here, once, to every address it has (`_addresses`), and the twins follow what it resolved
    to: `--host LOCALHOST`, `127.1` or `0` hold [::1] or [::] as 127.0.0.1 and 0.0.0.0 do, and a name with an IPv4
    and an IPv6 address (the one the node announces as its URL) holds both, not only the first (intruder review of
    1e2e3ab: another local user listened on the address the binding skipped and got the clients that preferred it).

    Each listens at once, not merely bound: a bound socket that does not listen shares its port with any other
    socket that sets SO_REUSEADDR, and whichever listens first gets it. `ringfence serve` calls this before it
    recovers or writes anything and keeps the sockets until it ends (api/serve.py)."""
    asked = _addresses(host, port)
    wanted: list[tuple[str, str | None]] = []  # (address, the asked address it is the twin of, or None)
    for address in asked:
        for candidate, of in ((address, None), (twin_of(address), address)):
            if candidate is not None and not any(_same(candidate, a) for a, _ in wanted):
                wanted.append((candidate, of))
    sockets: list[socket.socket] = []
    lacked: list[tuple[str, OSError]] = []  # asked addresses this machine does not have
    try:
        for address, of in wanted:
            try:
                sock = _listen(address, port)
            except OSError as err:
                if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and (of is not None or len(asked) > 1):
                    if of is None:
                        lacked.append((address, err))
                    warn(_missing(err, address, of, host, port, len(asked) == 1))
                    continue
                raise _refusal(err, address, host, port, sockets, len(asked) > 1) from None
            sockets.append(sock)
            port = port or sock.getsockname()[1]  # port 0: the others take the port the kernel gave the first
        if len(lacked) == len(asked):  # none of the addresses asked for is this machine's (a twin alone is not it)
            raise _refusal(lacked[0][1], lacked[0][0], host, port, [], True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` and on its twin (`twin_of`), for a child process that will `listen_on` it (the signer
    fleet's `signer run`, the DR drill's nodes). bind() to port 0 picks one free on the one family only: another local
    user holding ports on [::1] (they cost nothing to hold) would otherwise refuse the child's start each time one of
    theirs is picked (intruder review of 1e2e3ab). Not a reservation: the child may still lose a race for it."""
    twin = twin_of(host)
    for _ in range(1000):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if twin is None:
                return port
            try:
                with socket.socket(socket.AF_INET6 if ":" in twin else socket.AF_INET) as other:
                    if ":" in twin:
                        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    other.bind((twin, port))
            except OSError as err:
                if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    return port  # no such family here: the child warns and serves on the one
                continue
            return port
    raise OSError(errno.EADDRINUSE, f"no port is free on both {host} and {twin} (1000 tried)")


def _same(a: str, b: str) -> bool:
    return _ip(a) == _ip(b) if _ip(a) is not None else a == b


def _addresses(host: str, port: int) -> list[str]:
    """The addresses `host` stands for, each once: an IP address (or "", every IPv4 address) as it is, a host name
    resolved (every address, in the resolver's order), as bind() would resolve it but for all its addresses;
    ListenError naming --host for a name that does not resolve or cannot be a host name."""
    if host == "" or _ip(host) is not None:
        return [host]
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as err:
        reason = (err.strerror if isinstance(err, OSError) else None) or f"not a host name ({err})"
        raise ListenError(errno.EINVAL, f"--host {_printable(host)} --port {port}: cannot listen on "
                                        f"{_printable(_shown(host, port))}: {reason}") from None
    found: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and address not in found:
            found.append(address)
    if not found:
        raise ListenError(errno.EINVAL, f"--host {_printable(host)} --port {port}: cannot listen on "
                                        f"{_printable(_shown(host, port))}: it has no IPv4 or IPv6 address")
    return found


def _missing(err: OSError, address: str, of: str | None, host: str, port: int, alone: bool) -> str:
    """The warning for an address this machine lacks: the twin of `of`, or one of several a host name resolves to."""
    why = f"{err.strerror or err} on {_shown(address, port)}"
    if of is None:
        return (f"--host {_printable(host)}: it resolves to {address} too, which is not on this machine ({why}): not "
                f"listening there (nobody can listen there either)")
    family = "IPv6" if ":" in address else "IPv4"
    served = f"listening on {_shown(of, port)} only" if alone else f"not listening on {_shown(address, port)}"
    return (f"--host {_printable(host)}: no {family} on this machine ({why}): {served} (nobody can listen on "
            f"{_shown(address, port)} either)")


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


def _refusal(err: OSError, address: str, host: str, port: int, ours: list[socket.socket], name: bool) -> ListenError:
    """The line that refuses the start: --host, --port, the address and why; for a busy port, who holds it
    (`holders` of what conflicts with `address`, leaving out `ours`, the sockets this call already had)."""
    where = _shown(address, port)
    if address in _WHAT and not _same(address, host):  # a twin (or, of a name, a loopback or wildcard it resolves to)
        where += f" ({_WHAT[address]}; --host {_printable(host)} holds it too)"
    elif name:
        where += f" (one of the addresses --host {_printable(host)} resolves to)"
    reason = err.strerror or str(err)
    if err.errno == errno.EADDRINUSE:
        reason += f"; {holders(port, {os.fstat(s.fileno()).st_ino for s in ours}, address)}"
    return ListenError(err.errno or 0, f"--host {_printable(host)} --port {port}: cannot listen on {_printable(where)}: {reason}")


def _printable(text: str) -> str:
    """`text` with each character a terminal would act on (escape sequences, other controls, bidirectional
    overrides) shown as `\\xNN`/`\\uNNNN`: a process name is another user's choice (intruder review of 1e2e3ab: a
    holder's command line erased the refusal and printed a line of its own in the operator's terminal or log)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# ---------------------------------------------------------------- who holds a port (best effort, Linux /proc)


def holders(port: int, ours: Collection[int] = (), address: str | None = None) -> str:
    """Who listens on TCP `port` on this machine, as a sentence: each listening socket's address, user and, where
    this process may see it, the process (/proc/net/tcp, tcp6, /proc/PID/fd); not the sockets whose inodes are
    `ours`, and, given the `address` a bind was refused on, only those that keep it from binding there (`_blocks`:
    a listener on another address of the same port is not named as the holder)."""
    found: list[tuple[str, int, int]] = []  # (address, uid, inode)
    wanted = _ip(address.partition("%")[0]) if address is not None else None  # (/proc shows no scope id)
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
            if int(hex_port, 16) != port or int(fields[9]) in ours:
                continue
            theirs = _proc_address(address, v6)
            if wanted is None or _blocks(theirs, wanted):
                found.append((_shown(theirs, port), int(fields[7]), int(fields[9])))
    if not tables:
        return "who holds it is not shown on this system (no /proc/net/tcp)"
    if not found:
        return "no socket listens there (one bound without listening, or in another network namespace, holds it)"
    pids = _pids_of({inode for _, _, inode in found})
    return "held by " + ", ".join(f"{where} of {_user(uid)}{pids.get(inode, '')}" for where, uid, inode in found)


def _blocks(theirs: str, ours: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Can a listener on `theirs` be what keeps a socket from binding `ours` on the same port? The same address, or a
    wildcard on either side; an IPv6 wildcard (or a v4-mapped address) for an IPv4 one too, as /proc does not show
    whether that socket is IPV6_V6ONLY. (Ours are IPV6_V6ONLY: IPv4 listeners never keep them from an IPv6 address.)"""
    other = ipaddress.ip_address(theirs)
    if ours.version == 6:
        return other.version == 6 and (other == ours or other.is_unspecified or ours.is_unspecified)
    if other.version == 6:
        if other.is_unspecified:
            return True
        mapped = other.ipv4_mapped
        if mapped is None:
            return False
        other = mapped
    return other == ours or other.is_unspecified or ours.is_unspecified


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
                        command = _printable(" ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:80])
                except OSError:
                    command = "?"
                out[inode] = f", pid {pid} ({command})"
    return out
