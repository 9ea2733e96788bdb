"""`listening.listen_on`: a wildcard or loopback host holds the port on both address families (issue #21, intruder
review: `--host 0.0.0.0` bound IPv4 only, and another local user listening on [::]:PORT or [::1]:PORT got the
clients that resolve localhost to ::1 first; `--host ::1` left 127.0.0.1:PORT free; `--host ::` covered IPv4 or not
as the sysctl said). Real sockets in this process: while `listen_on` holds a host form, no other socket (with or
without SO_REUSEADDR, IPv6 sockets with and without IPV6_V6ONLY) binds any address the form covers; a taken twin is
refused with --host, --port, the address and its holder, and nothing is left listening. A machine without IPv6 (a
network namespace of its own with IPv6 turned off, `unshare -rn`) starts on IPv4 with one warning line.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfence.listening import ListenError, listen_on, twin_of, url_host

SRC = Path(__file__).resolve().parents[1] / "src"
LOOPBACKS = ("127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::")
#: every --host form that holds both families, and the addresses each covers (a wildcard covers the loopbacks too)
FORMS = {"127.0.0.1": LOOPBACKS, "localhost": LOOPBACKS, "::1": LOOPBACKS,
         "0.0.0.0": LOOPBACKS + WILDCARDS, "::": LOOPBACKS + WILDCARDS}
TWIN = {"127.0.0.1": "::1", "localhost": "::1", "::1": "127.0.0.1", "0.0.0.0": "::", "::": "0.0.0.0"}


def shown(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def other_socket_binds(address: str, port: int) -> list[str]:
    """Each way another socket tried `address`:`port` that bound (empty: none did)."""
    won = []
    for reuse in (0, 1):
        for v6only in ((0, 1) if ":" in address else (None,)):
            s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                if v6only is not None:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                s.bind((address, port))
            except OSError as err:
                assert err.errno == errno.EADDRINUSE, (address, err)
            else:
                won.append(f"{shown(address, port)} reuse={reuse} v6only={v6only}")
            finally:
                s.close()
    return won


def free_port_on_both() -> int:
    """A port free on both families' wildcards (and so on their loopbacks): one the kernel gave [::1], tried on
    0.0.0.0 and [::] together."""
    while True:
        with socket.socket(socket.AF_INET6) as s6:
            s6.bind(("::1", 0))
            port = s6.getsockname()[1]
        try:
            with socket.socket() as s4, socket.socket(socket.AF_INET6) as w6:
                s4.bind(("0.0.0.0", port))
                w6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                w6.bind(("::", port))
        except OSError:
            continue
        return port


def test_this_machine_has_ipv6_loopback():
    """The tests below need ::1; without it they would prove nothing about the twin (this says so, by name)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))


@pytest.mark.parametrize("host", list(FORMS))
def test_every_address_a_host_form_covers_is_held_until_the_sockets_close(host):
    port = free_port_on_both()
    warnings: list[str] = []
    sockets = listen_on(host, port, warnings.append)
    try:
        assert not warnings and len(sockets) == 2
        assert {s.family for s in sockets} == {socket.AF_INET, socket.AF_INET6}
        for s in sockets:
            if s.family == socket.AF_INET6:  # never IPv4 by the sysctl's say: the IPv4 socket is its own
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for address in FORMS[host]:
            assert other_socket_binds(address, port) == [], f"--host {host} left {address} free"
        for address in LOOPBACKS:  # and both answer: a client connects over either family
            with socket.create_connection((address, port), timeout=5):
                pass
    finally:
        for s in sockets:
            s.close()
    for address in FORMS[host]:  # (the check above can fail: once closed, every one binds)
        assert len(other_socket_binds(address, port)) >= 2


@pytest.mark.parametrize("host", list(FORMS))
def test_a_taken_twin_refuses_with_host_port_address_and_holder_and_leaves_nothing_listening(host):
    port = free_port_on_both()
    twin = TWIN[host]
    with socket.socket(socket.AF_INET6 if ":" in twin else socket.AF_INET) as theirs:
        if ":" in twin:
            theirs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        theirs.bind((twin, port))
        theirs.listen()
        with pytest.raises(ListenError) as refused:
            listen_on(host, port, pytest.fail)
        # what was taken before the twin is let go: nothing of the node is left half-serving
        for address in FORMS[host]:
            if address != twin and not (twin == "::" and ":" in address) and not (twin == "0.0.0.0" and ":" not in address):
                assert other_socket_binds(address, port), f"{address}:{port} still held after the refusal"
    err = refused.value
    assert err.errno == errno.EADDRINUSE
    text = str(err)
    assert text.startswith(f"--host {host} --port {port}: cannot listen on {shown(twin, port)} ("), text
    assert f"--host {host} holds it too): Address already in use; held by {shown(twin, port)} of user " in text, text
    assert f"pid {os.getpid()} (" in text, text  # this process's socket, named as the holder


def test_a_twin_bound_without_listening_is_refused_too_and_said_so():
    """A socket bound to [::]:PORT that never listens (invisible in /proc/net/tcp6) still keeps the node from the
    twin: refused, and the line says no socket listens there."""
    port = free_port_on_both()
    with socket.socket(socket.AF_INET6) as theirs:
        theirs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        theirs.bind(("::", port))
        with pytest.raises(ListenError) as refused:
            listen_on("0.0.0.0", port, pytest.fail)
    assert str(refused.value) == (f"--host 0.0.0.0 --port {port}: cannot listen on [::]:{port} (IPv6 wildcard, every IPv6 "
                                  "address of this machine; --host 0.0.0.0 holds it too): Address already in use; no socket "
                                  "listens there (one bound without listening, or in another network namespace, holds it)")
    assert len(other_socket_binds("0.0.0.0", port)) == 2  # the IPv4 half was let go


@pytest.mark.parametrize("host", ["10.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "example.invalid"])
def test_other_hosts_have_no_twin(host):
    assert twin_of(host) is None


@given(st.ip_addresses())
def test_twins_are_exactly_the_wildcards_and_loopbacks_in_any_spelling(ip):
    """Any IPv4 or IPv6 address, in its compressed and exploded spelling: a twin only for 127.0.0.1, ::1, 0.0.0.0
    and ::, and the twin's twin is the address itself."""
    twins = {ipaddress.ip_address(a): b for a, b in TWIN.items() if a != "localhost"}
    for spelling in {ip.compressed, ip.exploded}:
        assert twin_of(spelling) == twins.get(ip)
        if ip in twins:
            assert ipaddress.ip_address(twin_of(twins[ip]) or "") == ip
            assert url_host(spelling) == ("localhost" if ip.is_loopback else f"[{spelling}]" if ip.version == 6 else spelling)


def _run_without_ipv6(script: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    """`python SCRIPT` in a network namespace of its own (`unshare -rn`) with loopback up and IPv6 turned off."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    assert unshare and ip, "this test needs util-linux unshare and iproute2 ip (an IPv6-less network namespace)"
    return subprocess.run(
        [unshare, "-rn", "sh", "-ec", f"{ip} link set lo up; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
         f"echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6; exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=timeout, env=env)


def test_without_ipv6_a_loopback_or_wildcard_host_starts_on_ipv4_with_one_warning(tmp_path):
    """A network namespace of this test's own (`unshare -rn`) with IPv6 turned off: ::1 cannot be bound by anyone
    there (EADDRNOTAVAIL). --host 127.0.0.1 listens on IPv4 with one warning; --host ::1 is refused (the asked
    address itself is missing); 0.0.0.0 still holds [::] (the kernel lets it be bound, so it is held)."""
    script = tmp_path / "no_ipv6.py"
    script.write_text(
        "import socket, sys\n"
        "from ringfence.listening import ListenError, listen_on\n"
        "warned = []\n"
        "socks = listen_on('127.0.0.1', 8000, warned.append)\n"
        "print('loopback', [s.getsockname()[0] for s in socks], warned)\n"
        "try:\n"
        "    listen_on('::1', 8001, warned.append)\n"
        "except ListenError as err:\n"
        "    print('v6 refused', err)\n"
        "print('wildcard', sorted(s.getsockname()[0] for s in listen_on('0.0.0.0', 8002, warned.append)), len(warned))\n")
    out = _run_without_ipv6(script, dict(os.environ, PYTHONPATH=str(SRC)), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == ("loopback ['127.0.0.1'] ['--host 127.0.0.1: no IPv6 on this machine (Cannot assign requested "
                        "address on [::1]:8000): listening on 127.0.0.1:8000 only (nobody can listen on [::1]:8000 either)']"), lines
    assert lines[1] == "v6 refused --host ::1 --port 8001: cannot listen on [::1]:8001: Cannot assign requested address", lines
    assert lines[2] == "wildcard ['0.0.0.0', '::'] 1", lines


def test_serve_without_ipv6_starts_on_ipv4_and_says_so_in_one_line(tmp_path):
    """`ringfence serve` (default --host 127.0.0.1) in an IPv6-less network namespace: it serves on 127.0.0.1 and
    prints one warning line naming --host and [::1]; a SIGTERM still ends it cleanly."""
    script = tmp_path / "serve_no_ipv6.py"
    script.write_text(
        "import signal, subprocess, sys, time\n"
        "import httpx\n"
        f"proc = subprocess.Popen([sys.executable, '-m', 'ringfence.cli', 'serve', '--data', {str(tmp_path / 'd')!r},"
        " '--port', '8000'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
        "deadline, answer = time.time() + 120, None\n"
        "while answer is None and proc.poll() is None and time.time() < deadline:\n"
        "    try:\n"
        "        answer = httpx.get('http://127.0.0.1:8000/api/v3/ping', timeout=1).json()\n"
        "    except httpx.HTTPError:\n"
        "        time.sleep(0.2)\n"
        "proc.send_signal(signal.SIGTERM)\n"
        "out = proc.communicate(timeout=60)[0]\n"
        "print('answer', answer, 'exit', proc.returncode)\n"
        "print(out)\n")
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1", COLUMNS="300", RINGFENCE_CUSTODY_CHAINS="none",
               RINGFENCE_DEMO_FEED="0", RINGFENCE_POR_EVERY_S="0")
    out = _run_without_ipv6(script, env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("answer {} exit 0\n"), out.stdout[-3000:]
    warnings = [line for line in out.stdout.splitlines() if "--host" in line]
    assert warnings == ["warning: --host 127.0.0.1: no IPv6 on this machine (Cannot assign requested address on "
                        "[::1]:8000): listening on 127.0.0.1:8000 only (nobody can listen on [::1]:8000 either)"], out.stdout[-3000:]
    assert "serving on http://localhost:8000/" in out.stdout


# ------------------------------------------------ intruder review of 1e2e3ab: spellings, names, holders, free ports


@pytest.mark.parametrize("host,covers", [("LOCALHOST", LOOPBACKS), ("127.1", LOOPBACKS), ("0", LOOPBACKS + WILDCARDS)])
def test_other_spellings_of_a_loopback_or_wildcard_hold_both_families(host, covers):
    """`--host LOCALHOST`, `127.1` and `0` are what bind() makes of them (127.0.0.1, 0.0.0.0), so they hold the
    twin too: before, only a literal spelling did, and another user's [::1]:PORT got curl's `http://LOCALHOST:PORT`
    (curl sends any case of localhost to ::1 too)."""
    port = free_port_on_both()
    sockets = listen_on(host, port, pytest.fail)
    try:
        assert {s.family for s in sockets} == {socket.AF_INET, socket.AF_INET6}
        for address in covers:
            assert other_socket_binds(address, port) == [], f"--host {host} left {address} free"
    finally:
        for s in sockets:
            s.close()


def in_own_network(tmp_path: Path, setup: str, code: str) -> list[str]:
    """Run `code` (Python, listening.py importable) as root of a user, mount and network namespace of its own
    (`unshare -rmn`) after the shell lines `setup`; its output lines."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    assert unshare and ip, "this test needs util-linux unshare and iproute2 ip (a network namespace of its own)"
    script = tmp_path / "inside.py"
    script.write_text(code)
    out = subprocess.run([unshare, "-rmn", "sh", "-ec", f"{ip} link set lo up; {setup}; exec {sys.executable} {script}"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_a_host_name_holds_every_address_it_resolves_to(tmp_path):
    """`--host exch.test`, a name with an IPv4 and an IPv6 address (the node announces http://exch.test:PORT): both
    are held, and no socket binds either. Before, bind() took the first IPv4 address only, and another local user
    listening on the IPv6 one got the clients (curl among them) that connect to it first. An address of the name
    that is not on this machine is one warning line."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n192.0.2.7 exch.test\n2001:db8::7 exch.test\n"
                     "192.0.2.7 half.test\n2001:db8::8 half.test\n")
    code = (
        "import errno, socket\n"
        "from ringfence.listening import listen_on\n"
        "warned = []\n"
        "socks = listen_on('exch.test', 8000, warned.append)\n"
        "print(sorted(s.getsockname()[0] for s in socks), warned)\n"
        "for address in ('192.0.2.7', '2001:db8::7', '0.0.0.0', '::'):\n"
        "    for reuse in (0, 1):\n"
        "        s = socket.socket(socket.AF_INET6 if ':' in address else socket.AF_INET)\n"
        "        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)\n"
        "        try:\n"
        "            s.bind((address, 8000))\n"
        "            print('bound', address, reuse)\n"
        "        except OSError as err:\n"
        "            assert err.errno == errno.EADDRINUSE, err\n"
        "        s.close()\n"
        "half = listen_on('half.test', 8001, warned.append)\n"
        "print(sorted(s.getsockname()[0] for s in half), warned)\n")
    lines = in_own_network(tmp_path, f"ip addr add 192.0.2.7/32 dev lo; ip addr add 2001:db8::7/128 dev lo nodad; "
                                     f"mount --bind {hosts} /etc/hosts", code)
    assert lines[0] == "['192.0.2.7', '2001:db8::7'] []", lines
    assert lines[1] == ("['192.0.2.7'] ['--host half.test: it resolves to 2001:db8::8 too, which is not on this machine "
                        "(Cannot assign requested address on [2001:db8::8]:8001): not listening there (nobody can "
                        "listen there either)']"), lines


def test_the_holders_command_line_cannot_write_to_the_operators_terminal():
    """A holder's command line is its owner's choice: escape sequences and other controls in it are shown as \\xNN,
    never passed to the operator's terminal or log (before: ESC[2K ESC[1A erased the refusal and printed a green
    `serving on ...` of the holder's own)."""
    port = free_port_on_both()
    name = "x\x1b[2K\x1b[1A\x1b[32mserving on http://localhost/ all good\x1b[8m\u202e"
    code = (f"import socket, sys, time\ns = socket.socket(socket.AF_INET6)\n"
            f"s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\ns.bind(('::1', {port}))\ns.listen()\n"
            "print('listening', flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([name, "-c", code], executable=sys.executable, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "listening\n"
        with pytest.raises(ListenError) as refused:
            listen_on("127.0.0.1", port, pytest.fail)
    finally:
        holder.kill()
        holder.wait()
    text = str(refused.value)
    assert f"pid {holder.pid} (x\\x1b[2K\\x1b[1A\\x1b[32mserving on http://localhost/ all good\\x1b[8m\\u202e " in text, text
    assert all(c.isprintable() for c in text), text


def test_a_listener_on_another_address_of_the_port_is_not_named_as_the_holder():
    """The twin [::1]:PORT is kept by a socket bound there without listening (invisible in /proc/net), while
    127.0.0.2:PORT listens, harmlessly: the line says no socket listens on the twin, not `held by 127.0.0.2`."""
    port = free_port_on_both()
    with socket.socket() as bystander, socket.socket(socket.AF_INET6) as blocker:
        bystander.bind(("127.0.0.2", port))
        bystander.listen()
        blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        blocker.bind(("::1", port))
        with pytest.raises(ListenError) as refused:
            listen_on("127.0.0.1", port, pytest.fail)
    assert "127.0.0.2" not in str(refused.value)
    assert str(refused.value).endswith("Address already in use; no socket listens there (one bound without listening, "
                                       "or in another network namespace, holds it)"), str(refused.value)


@pytest.mark.parametrize("theirs,ours,blocks", [
    ("127.0.0.1", "127.0.0.1", True), ("0.0.0.0", "127.0.0.1", True), ("127.0.0.2", "0.0.0.0", True),
    ("127.0.0.2", "127.0.0.1", False), ("::", "127.0.0.1", True), ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("::ffff:127.0.0.2", "127.0.0.1", False), ("::1", "127.0.0.1", False), ("127.0.0.1", "::1", False),
    ("0.0.0.0", "::", False), ("::", "::1", True), ("fd00::2", "::", True), ("fd00::2", "::1", False)])
def test_which_listeners_can_keep_an_address_from_binding(theirs, ours, blocks):
    from ringfence.listening import _blocks

    assert _blocks(theirs, ipaddress.ip_address(ours)) is blocks


def test_a_host_that_cannot_be_a_name_is_refused_by_name_not_with_a_traceback():
    """A --host with bytes that are not UTF-8 (a shell passes them as surrogates) was a TypeError from bind()."""
    with pytest.raises(ListenError) as refused:
        listen_on("ex\udcffample", 8000, pytest.fail)
    assert str(refused.value).startswith("--host ex\\udcffample --port 8000: cannot listen on ex\\udcffample:8000: "), str(refused.value)


def test_port_zero_gives_the_twin_the_same_port():
    sockets = listen_on("127.0.0.1", 0, pytest.fail)
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1 and len(sockets) == 2
    finally:
        for s in sockets:
            s.close()


def test_free_port_skips_ports_another_user_holds_on_the_twin(tmp_path):
    """The signer fleet and the DR drill pick a port for a child that holds 127.0.0.1 and [::1]: with every port of
    a four-port range but one held on [::1] (a namespace of its own), each pick is the one both families have free.
    Before, bind(port 0) on 127.0.0.1 picked any of the four and the child was refused three times in four."""
    code = (
        "import socket\n"
        "from ringfence.custody.btc_signing import _free_port\n"
        "from ringfence.listening import free_port\n"
        "held = []\n"
        "for port in (40000, 40001, 40002):\n"
        "    s = socket.socket(socket.AF_INET6)\n"
        "    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "    s.bind(('::1', port))\n"
        "    s.listen()\n"
        "    held.append(s)\n"
        "print(sorted({free_port() for _ in range(40)} | {_free_port() for _ in range(40)}))\n")
    lines = in_own_network(tmp_path, "echo '40000 40003' > /proc/sys/net/ipv4/ip_local_port_range", code)
    assert lines == ["[40003]"], lines
