"""The staff console page in a real browser (Playwright driving Debian's Chromium) against a real
`serve --demo`: sign in with a demo staff key, see the halt, fail to lift it alone (the quorum rule
is shown), lift it with a second operator's approval token; see the markets with their filters and
set a fee tier with an approval signed on the command line; read the audit trail back from the journal;
the key never leaves the page (every
request and decision is signed with WebCrypto Ed25519 and verified by the server and the engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.api.conftest import Server
from tests.staff.staff_login import demo_login, staff_sign_in

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("admin-page") / "data", chains=False)
    yield srv
    assert srv.stop() == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_lift_a_halt_from_the_console_page(server, tmp_path) -> None:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing"
    staff_file = server.data / "demo-staff.json"
    url = ("--url", server.base)
    # a feed key registered from the command line by the operator quorum (ada submits, ben approves),
    # before the halt (a halt stops admin changes); the page lists it
    feed_key = "ab" * 32
    feed = ("index", "register-feed", "--venue", "pagevenue", "--public-key", feed_key)
    approval = cli(*feed, "--key", f"{staff_file}#ben", "--sign-only", *url)
    assert approval.returncode == 0, approval.stderr
    done = cli(*feed, "--key", f"{staff_file}#ada", "--approval", approval.stdout.strip(), *url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli("halts", "raise", "page-1", "--reason", "page test", "--key", f"{staff_file}#ada", *url).returncode == 0
    token = cli("halts", "lift", "page-1", "--reason", "fixed", "--key", f"{staff_file}#ada", "--sign-only", *url).stdout.strip()
    assert token.startswith("ada:")
    # ada's approval of a fee tier, signed on the command line; ben submits it from the page, which signs
    # the same decision in the browser (the two encodings must agree to the byte for the engine to accept)
    fee_token = cli("market", "fees", "2", "--maker", "0.0002", "--taker", "0.0004", "--reason", "page tier",
                    "--key", f"{staff_file}#ada", "--sign-only", *url).stdout.strip()
    assert fee_token.startswith("ada:")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        staff_sign_in(page, server.base, demo_login(server.data, "ben"))  # the console needs ben's staff session
        page.fill("#keyfile", staff_file.read_text())
        page.fill("#staffid", "ben")
        page.click("#signin")
        expect(page.locator("#who")).to_have_text("signed in as ben")
        row = page.locator('#halts tr[data-halt="page-1"]')
        expect(row).to_contain_text("HALTED")
        row.locator(".lift-reason").fill("fixed")
        row.locator(".lift-submit").click()  # ben alone
        expect(page.locator("#status")).to_contain_text("rule 'quorum'")
        expect(page.locator('#halts tr[data-halt="page-1"]')).to_have_count(1)
        row = page.locator('#halts tr[data-halt="page-1"]')
        row.locator(".lift-reason").fill("fixed")
        row.locator(".lift-approvals").fill(token)
        row.locator(".lift-submit").click()
        expect(page.locator("#status")).to_contain_text("accepted (LiftHaltSigned)")
        expect(page.locator('#halts tr[data-halt="page-1"]')).to_have_count(0)
        market = page.locator('#markets tr[data-symbol="BTCUSDT"]')  # the markets with their filters
        expect(market).to_contain_text("ACTIVE")
        expect(market).to_contain_text("0.01")
        form = page.locator("#fee-tier")
        for name, value in (("tier", "2"), ("maker_rate_ppm", "200"), ("taker_rate_ppm", "400"), ("reason", "page tier")):
            form.locator(f'[name="{name}"]').fill(value)
        form.locator(".fee-tier-approvals").fill(fee_token)
        form.locator(".fee-tier-submit").click()
        expect(page.locator("#status")).to_contain_text("accepted (SetFeeTierSigned)")
        expect(page.locator('#fee-tiers tr[data-tier="2"]')).to_contain_text("400")
        # the audit trail, read back from the journal: who sent each decision, who signed it, about what, why
        page.click("#audit-load")
        expect(page.locator("#status")).to_contain_text("audit trail up to seq")
        lift = page.locator("#audit tr", has_text="LiftHaltSigned").first
        for text in ("page-1", "staff:ben", "ben, ada", "fixed"):
            expect(lift).to_contain_text(text)
        expect(page.locator("#audit tr", has_text="SetFeeTierSigned").first).to_contain_text("page tier")
        expect(page.locator("#audit tr", has_text="RegisterFeedKey").first).to_contain_text("staff:ada")
        expect(page.locator("#staff")).to_contain_text("ada")
        expect(page.locator('#feed-keys tr[data-venue="pagevenue"]')).to_contain_text(feed_key)
        page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'admin.png'}")
        assert not errors, errors
        browser.close()
    lifted = json.loads(cli("halts", "list", "--key", f"{staff_file}#ada", "--json", *url).stdout)["recently_lifted"][0]
    assert lifted["halt_id"] == "page-1" and lifted["approvers"] == ["ben", "ada"]


def test_the_console_needs_a_staff_session_with_a_second_factor(server, tmp_path) -> None:
    """Issue 16, items 1-2: /admin is served to a staff member's session only, and only after the second
    factor. httpx: no session, or a password-only (second factor pending) session, is sent to /login and
    gets neither the page nor its script; a member's full session (TOTP) gets it; a page request signed by
    another member than the session's is refused; once the quorum removes the member, the session is refused. Chromium: cy adds a passkey in the security centre
    (virtual authenticator), signs in again with password + passkey, and the console opens."""
    import httpx
    import pyotp

    from ringfence.staff.console import load_key
    from ringfence.staff.requests import signed_headers

    base = server.base.replace("127.0.0.1", "localhost")
    for path in ("/admin", "/admin/assets/admin.js"):
        bare = httpx.get(base + path)
        assert bare.status_code == 303 and bare.headers["location"] == "/login", (path, bare.status_code)
        assert "keyfile" not in bare.text and "WebCrypto" not in bare.text
    login = demo_login(server.data, "pat")
    origin = {"Origin": base}
    first = httpx.post(base + "/login", data={"email": login["email"], "password": login["password"]}, headers=origin)
    assert first.status_code == 303 and first.headers["location"] == "/login/2fa", first.text
    pending = first.cookies.get("__Host-rf_pending") or first.headers["set-cookie"].split("__Host-rf_pending=")[1].split(";")[0]
    for name in ("__Host-rf_session", "__Host-rf_pending"):  # the password alone opens nothing
        refused = httpx.get(base + "/admin", headers={"Cookie": f"{name}={pending}"})
        assert refused.status_code == 303 and refused.headers["location"] == "/login"
    done = httpx.post(base + "/login/2fa", data={"method": "totp", "code": pyotp.TOTP(login["totp_secret"]).now()},
                      headers={**origin, "Cookie": f"__Host-rf_pending={pending}"})
    assert done.status_code == 303, done.text
    session = done.headers["set-cookie"].split("__Host-rf_session=")[1].split(";")[0]
    page = httpx.get(base + "/admin", headers={"Cookie": f"__Host-rf_session={session}"})
    assert page.status_code == 200 and page.headers["x-rf-staff-session"] == "pat" and "keyfile" in page.text
    # a request signed with ada's key, sent with pat's session: refused; the same without a cookie (the CLI) passes
    ada = load_key(f"{server.data / 'demo-staff.json'}#ada")
    mixed = httpx.get(base + "/admin/v1/halts", headers={**signed_headers(ada, "GET", "/admin/v1/halts", "", b""),
                                                         "Cookie": f"__Host-rf_session={session}"})
    assert mixed.status_code == 403 and "the session is pat's" in mixed.text, mixed.text
    alone = httpx.get(base + "/admin/v1/halts", headers=signed_headers(ada, "GET", "/admin/v1/halts", "", b""))
    assert alone.status_code == 200, alone.text
    # removed from the register by the operator quorum: pat's session no longer opens the console
    staff_file = server.data / "demo-staff.json"
    removed = cli("staff", "remove", "pat", "--reason", "left the desk", "--key", f"{staff_file}#ada", "--key", f"{staff_file}#ben",
                  "--url", server.base)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    gone = httpx.get(base + "/admin", headers={"Cookie": f"__Host-rf_session={session}"})
    assert gone.status_code == 403 and "not an active member" in gone.text, gone.text

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context()
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": True, "automaticPresenceSimulation": True}})
        cy = demo_login(server.data, "cy")
        web = staff_sign_in(page, server.base, cy)
        expect(page.locator("#keyfile")).to_be_visible()
        page.goto(web + "/security")
        page.fill("#passkey-label", "cy laptop")
        page.click("#add-passkey")
        expect(page.locator("#passkeys")).to_contain_text("cy laptop", timeout=15_000)
        page.click("#logout")
        page.goto(web + "/admin")
        expect(page).to_have_url(web + "/login")  # signed out: the console is gone
        page.fill("#email", cy["email"])
        page.fill("#password", cy["password"])
        page.click("#signin")
        page.wait_for_url("**/login/2fa")
        page.click("#passkey-login")
        page.wait_for_url(web + "/security")
        page.goto(web + "/admin")
        expect(page.locator("#keyfile")).to_be_visible()
        browser.close()
