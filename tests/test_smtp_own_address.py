"""A relay on one of this machine's own addresses is "this machine" whichever interface holds the address (intruder
review of session 24): is_this_machine knew loopback and the host name's addresses only, so eth0's address (here
192.0.2.2) on a port >= 1024 with security none was taken outside dev mode, and uid 4242 listening there (as
they can, while the relay is down) got the SMTP login and the password-reset mail."""

from __future__ import annotations

import socket
from pathlib import Path

from ringfence.settings import Settings, is_this_machine


def _own_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, as the kernel lists them (/proc/net/fib_trie, LOCAL)."""
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    found = {lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line}
    return sorted(a for a in found if not a.startswith("127."))


def test_a_relay_on_another_interfaces_address_is_this_machines():
    addresses = _own_addresses()
    assert addresses, "this machine has no address besides loopback: nothing to check the rule on"
    for address in addresses:
        listener = socket.socket()  # any local user may listen there: what the rule is about
        listener.bind((address, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        try:
            assert is_this_machine(address), address
            settings = Settings(mode="prod", identity_smtp_host=address, identity_smtp_port=port,
                                identity_smtp_security="none", identity_smtp_username="relay",
                                identity_smtp_password="smtp-secret-1234")
            problems = settings.smtp_problems()
            assert [p.field for p in problems] == ["RINGFENCE_IDENTITY_SMTP_SECURITY"], problems
            assert f"({address}:{port})" in str(problems[0]) and "smtp-secret" not in str(problems[0])
        finally:
            listener.close()
    assert not is_this_machine("192.0.2.254") or "192.0.2.254" in addresses  # (TEST-NET: nobody's here)
    assert not is_this_machine("mail.example.com")


def test_a_login_over_none_to_a_relay_elsewhere_is_refused_outside_dev_mode():
    # a remote relay (TEST-NET, nobody's here) with a login and no TLS: the login would cross the network in clear
    login = {"identity_smtp_username": "relay", "identity_smtp_password": "smtp-secret-1234"}
    remote = {"identity_smtp_host": "192.0.2.254", "identity_smtp_port": 587}
    problems = Settings(mode="prod", identity_smtp_security="none", **remote, **login).smtp_problems()
    assert [p.field for p in problems] == ["RINGFENCE_IDENTITY_SMTP_SECURITY"], problems
    assert "login" in str(problems[0]) and "192.0.2.254:587" in str(problems[0]) and "smtp-secret" not in str(problems[0])
    assert Settings(mode="prod", identity_smtp_security="none", identity_smtp_password="p", **remote).smtp_problems()
    # the same relay without a login, or with TLS, or in dev mode: taken
    assert Settings(mode="prod", identity_smtp_security="none", **remote).smtp_problems() == []
    for security in ("starttls", "ssl"):
        assert Settings(mode="prod", identity_smtp_security=security, **remote, **login).smtp_problems() == []
    assert Settings(mode="dev", identity_smtp_security="none", **remote, **login).production_problems() == []
