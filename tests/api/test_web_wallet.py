"""The wallet pages of the dashboard against a real `ringfence serve --demo` process, in Debian's
Chromium (Playwright), on the signed-in web session (issue 15, items 3 and 4):

a newcomer signs up (the sign-up's forms posted over HTTP, its session put into the browser: test_web_session.py
clicks through them) → Withdraw: adds a withdrawal address with a TOTP
code, the e-mail at /dev/mail (with the anti-phishing code) carries the link that adds it → the entry
cools (short cooling period via env), and meanwhile → Deposit: the BTC address and its QR code → the
test pays it with `ringfence chain pay` → the page shows the confirmations progressing to credited
→ withdraws a small amount with a TOTP code, confirms the e-mailed link → the timeline reaches
completed and the destination's on-chain balance (`ringfence chain balance`) rose by the amount
less the fee. Refusals — a wrong TOTP code, no CSRF token, an address of another network — get a
clear error and change nothing (the journal's last sequence number does not move).

Screenshots go to docs/img/wallet-*.png.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import segno
from playwright.sync_api import expect

from ringfence.identity.second_factor import TOTP_DRIFT_STEPS, TOTP_STEP_S

from .conftest import Server, cli, invoke
from .test_web_session import IMG, browser, last_seq, sign_up_by_http  # noqa: F401 (fixture)

# The lock after a security change (here: the address-book change itself) must still hold when the page
# first tries to withdraw, and the cooling must outlast it long enough to be seen: with a 12 s lock and
# 20 s cooling, a run at load 25 took longer than the lock from the address's button to that first try
COOLING_S = 50
LOCK_S = 30
ENV = {"RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": "800", "RINGFENCE_CUSTODY_POLL_MS": "200",
       "RINGFENCE_CUSTODY_ADDRESS_COOLING_S": str(COOLING_S), "RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S": str(LOCK_S)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("wallet") / "data", env=ENV)
    srv.web = srv.base.replace("127.0.0.1", "localhost")
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"



def chain_balance(data: Path, asset: str, address: str) -> Decimal:
    res = invoke("chain", "balance", "--data", str(data), "--asset", asset, "--address", address)
    assert res.returncode == 0, res.stderr
    return Decimal(res.stdout.strip())


def shot(page, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"wallet-{name}.png"), full_page=True)


def outside_addresses(data: Path) -> dict[str, str]:
    """Addresses outside the newcomer's account on the local chains (the demo's own withdrawal entries)."""
    entries = json.loads((data / "demo-keys.json").read_text())
    return next(e["withdraw_addresses"] for e in entries if e.get("withdraw_addresses"))


def new_page(chromium: Any) -> tuple[Any, Any, list[str]]:
    """A context and a 1300 x 900 page of its own, and the list the page's script errors go to (each test
    asserts it is empty)."""
    context = chromium.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


def fresh_code(totp) -> str:
    """A TOTP code of a step after every one used before in this test (identity refuses a step at or
    before the last it accepted). Identity accepts a code up to TOTP_DRIFT_STEPS steps ahead of its
    clock (a phone whose clock runs fast), so the next step's code is used at once rather than
    waiting up to 30 s for it; only when that one is taken too does this wait for the clock."""
    while True:
        now_step = int(time.time()) // TOTP_STEP_S
        step = max(fresh_code.last_step + 1, now_step)  # type: ignore[attr-defined]
        if step <= now_step + TOTP_DRIFT_STEPS:
            break
        time.sleep(0.5)
    fresh_code.last_step = step  # type: ignore[attr-defined]
    return totp.at(step * TOTP_STEP_S)


def latest_mail(page, base: str, to: str, subject: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(base + "/dev/mail")
        mail = page.locator(f'section.mail[data-to="{to}"]').filter(has_text=subject)
        if mail.count():
            return mail.first
        assert time.monotonic() < deadline, f"no '{subject}' mail to {to}:\n" + page.inner_text("body")
        time.sleep(0.5)


def test_newcomer_deposits_adds_an_address_and_withdraws_on_the_wallet_pages(server, browser):  # noqa: F811
    context, page, errors = new_page(browser)
    base, email = server.web, "saver@example.com"
    totp = sign_up_by_http(context, base, email)  # the sign-up's pages: test_web_session.py
    fresh_code.last_step = int(time.time()) // TOTP_STEP_S  # type: ignore[attr-defined]  # at or after the code that turned TOTP on
    page.goto(base + "/security")  # an anti-phishing code, so the e-mails below can be told from a phish
    page.fill("#apc-code", "SAVER-42")
    page.click("#set-apc")
    expect(page.locator("#apc")).to_have_text("SAVER-42")

    # ---- the address book: refusals first (nothing changes), then TOTP + the e-mailed link
    dest = outside_addresses(server.data)
    page.goto(base + "/wallet/withdraw")
    expect(page.locator("#book-cooling")).to_have_text(f"{COOLING_S} seconds")  # in words, as the mail and the link's page
    before = last_seq(server)
    page.select_option("#book-coin", "BTC")
    page.fill("#book-address", dest["ETH"])  # an Ethereum address for BTC
    page.fill("#book-code", fresh_code(totp))
    page.click("#book-add")
    expect(page.locator("#book-status")).to_contain_text("Illegal address for BTC on network BTC")
    page.fill("#book-address", dest["BTC"])
    page.fill("#book-code", "000000" if totp.now() != "000000" else "111111")
    page.click("#book-add")
    expect(page.locator("#book-status")).to_contain_text("Second factor not accepted")
    csrf = page.evaluate("fetch('/session/v3/me').then(r => r.json()).then(j => j.csrfToken)")
    status, body = page.evaluate("""(a) => fetch('/session/v3/addressBook', {method: 'POST',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'coin=BTC&address=' + a})
        .then(async r => [r.status, await r.json()])""", dest["BTC"])
    assert status == 403 and "CSRF" in body["msg"], body
    assert last_seq(server) == before
    assert page.evaluate("fetch('/session/v3/addressBook').then(r => r.json())")["entries"] == []
    assert csrf

    page.fill("#book-address", dest["BTC"])
    page.fill("#book-code", fresh_code(totp))
    asked_s = int(time.time())  # the address-book change locks withdrawals from about now
    page.click("#book-add")
    expect(page.locator("#book-status")).to_contain_text("e-mail sent")
    assert page.evaluate("fetch('/session/v3/addressBook').then(r => r.json())")["entries"] == [], "not before the link"
    shot(page, "3-address-requested")
    mail = latest_mail(page, base, email, "Confirm a new withdrawal address")
    expect(mail.locator(".mail-subject")).to_contain_text("[SAVER-42]")
    expect(mail.locator(".mail-body")).to_contain_text("Anti-phishing code: SAVER-42")
    expect(mail.locator(".mail-body")).to_contain_text(dest["BTC"])
    # "not you?": the one-click freeze link, as in the security-change notice (no such control in the security centre)
    expect(mail.locator(".mail-body")).to_contain_text("freeze your account with one click, then change your password:")
    expect(mail.locator('.mail-body a[href*="/security/freeze?token="]')).to_have_count(1)
    expect(mail.locator(".mail-body")).not_to_contain_text("from the security centre")
    expect(mail.locator(".mail-body")).to_contain_text(f"the address cools for {COOLING_S} seconds before")
    shot(page, "4-address-mail")
    address_link = mail.locator('a[href*="/wallet/confirm-address?token="]').get_attribute("href")
    # the security notice sent with the request says what was asked, not that the address was added
    notice = latest_mail(page, base, email, "Security notice: a withdrawal address was requested")
    expect(notice.locator(".mail-body")).to_contain_text("It is added only when the link in the separate confirmation e-mail is pressed")
    expect(notice.locator(".mail-body")).not_to_contain_text("changed")
    page.goto(address_link)
    expect(page.locator("h1")).to_have_text("Add this withdrawal address?")  # the link's GET adds nothing
    expect(page.locator("#book-address")).to_have_text(dest["BTC"])
    # asked with the browser context's own request client (the same cookies), not from the link's page
    assert page.request.get(base + "/session/v3/addressBook").json()["entries"] == [], "not before the button"
    page.click("#confirm-address")
    expect(page.locator("h1")).to_have_text("Withdrawal address added")
    expect(page.locator("#message")).to_have_text(f"{dest['BTC']} is in your BTC address book. It cools for {COOLING_S} seconds "
                                                  "before it can receive withdrawals.")

    page.goto(base + "/wallet/withdraw")
    entry = page.locator(f'#book tr[data-address="{dest["BTC"]}"]')
    expect(entry).to_have_attribute("data-state", "cooling")
    expect(entry.locator("td.state")).to_contain_text("cooling")
    shot(page, "5-address-cooling")
    # a withdrawal now is refused twice over, each time changing nothing: first by the lock that the
    # address-book change set (identity's security event, relayed into the engine as
    # RecordSecurityChange: the web path checks only the engine's state, so this is the engine's
    # lock), canWithdraw false meanwhile; once the lock ends, by the entry's cooling period
    page.select_option("#wd-coin", "BTC")
    before = last_seq(server)

    def refusal() -> str:
        page.select_option("#wd-address", dest["BTC"])
        page.fill("#wd-amount", "0.01")
        page.fill("#wd-code", totp.now())  # every other check runs before the code is spent: not consumed
        page.locator("#wd-status").evaluate("e => e.textContent = ''")
        page.click("#wd-submit")
        page.wait_for_function("() => !['', '…'].includes(document.querySelector('#wd-status').textContent)")
        return page.inner_text("#wd-status")

    answers = [refusal()]
    # the lock names the change that set it (the address book, not Binance's "password, 2FA or e-mail")
    # and when it ends: at most LOCK_S after the address was asked for, still ahead now
    locked = f"Withdrawals are locked for {LOCK_S} s after a change to your withdrawal address book; they open again at "
    assert locked in answers[0] and "password" not in answers[0], answers
    ends = re.search(r"they open again at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \(in (\d+) s\)\.", answers[0])
    assert ends, answers
    from datetime import datetime, timezone

    until_s = datetime.strptime(ends.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    assert asked_s < until_s <= asked_s + LOCK_S + 2 and until_s > time.time() - 1, (asked_s, ends.group(0))
    assert 0 < int(ends.group(2)) <= LOCK_S, answers
    account = page.evaluate("fetch('/session/v3/account').then(r => r.json())")
    assert account["canWithdraw"] is False and account["canDeposit"] is True, account
    deadline = time.monotonic() + LOCK_S + 5
    while "after a change to your withdrawal address book" in answers[-1] and time.monotonic() < deadline:
        time.sleep(1)
        answers.append(refusal())
    assert "needs time before withdrawals" in answers[-1], answers
    assert page.evaluate("fetch('/session/v3/account').then(r => r.json())")["canWithdraw"] is True
    assert last_seq(server) == before

    # ---- deposit: the address, its QR code, confirmations progressing to credited (while the address cools:
    # the lock and the cooling are checked before the balance, so the refusals above needed no funds)
    page.goto(base + "/wallet/deposit")
    expect(page.locator("#whoami")).to_have_text(f"signed in as {email}")
    page.select_option("#dep-coin", "BTC")
    expect(page.locator("#dep-address")).not_to_be_empty()
    address = page.inner_text("#dep-address")
    assert address.startswith("bcrt1"), address
    qr = page.locator("#dep-qr svg#deposit-qr")
    expect(qr).to_be_visible()
    expected = segno.make(address, error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff")
    drawn = qr.evaluate("e => [...e.querySelectorAll('path')].map(p => p.getAttribute('d'))")
    assert drawn == re.findall(r' d="([^"]+)"', expected), "the QR code encodes exactly the deposit address"
    shot(page, "1-deposit-address")

    paid = cli("chain", "pay", "--data", str(server.data), "--asset", "BTC", "--to", address, "--amount", "0.5")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()
    row = page.locator(f'#deposits tr[data-txid="{txid}"]')
    expect(row).to_have_count(1, timeout=30_000)
    seen: set[tuple[str, str]] = set()
    deadline, status = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # one read of the row per sample: the page may redraw between reads
        sample = row.evaluate("r => [r.dataset.status, r.querySelector('td.confirm').textContent,"
                              " r.querySelector('td.status').textContent]") if row.count() else None
        if sample:
            status = sample[0]
            seen.add((sample[1], sample[2]))
            if status == "1":
                break
        time.sleep(0.1)
    assert status == "1", seen
    assert len({c for c, _ in seen}) >= 2, f"the confirmations should be seen progressing: {seen}"
    assert {"credited", "final"} & {s for _, s in seen}, seen
    expect(row.locator("td.amount")).to_have_text("0.5")
    # times as every page writes them (the server's format_time: the locale's medium date and time, UTC)
    expect(row.locator("td").first).to_have_text(re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d\d:\d\d\s[AP]M UTC$"))
    shot(page, "2-deposit-credited")

    page.goto(base + "/wallet/withdraw")
    expect(entry).to_have_attribute("data-state", "usable", timeout=(COOLING_S + 10) * 1000)
    page.goto(address_link)  # the used address link reopened: it says only that (nothing of the book, intruder review)
    expect(page.locator("h1")).to_have_text("This link cannot be used")
    expect(page.locator("#message")).to_have_text("This confirmation link was already used.")
    expect(page.locator("body")).not_to_contain_text(dest["BTC"])
    page.goto(base + "/wallet/withdraw")
    page.select_option("#wd-coin", "BTC")
    expect(page.locator("#wd-limits")).to_contain_text("fee 0.0001 BTC")
    start = chain_balance(server.data, "BTC", dest["BTC"])
    page.select_option("#wd-address", dest["BTC"])
    page.fill("#wd-amount", "0.01")
    page.fill("#wd-code", fresh_code(totp))
    page.click("#wd-submit")
    expect(page.locator("#wd-status")).to_contain_text("e-mail sent")
    wd = page.locator("#withdrawals .withdrawal").first
    expect(wd).to_have_attribute("data-status", "0")
    shot(page, "6-withdrawal-email-sent")
    mail = latest_mail(page, base, email, "Confirm your withdrawal")
    expect(mail.locator(".mail-body")).to_contain_text("Anti-phishing code: SAVER-42")
    # the amount, the fee and what arrives (as the link's page shows them), the link's end, a freeze link
    expect(mail.locator(".mail-body")).to_contain_text("asked to withdraw 0.01 BTC to this address:")
    expect(mail.locator(".mail-body")).to_contain_text("Fee: 0.0001 BTC")
    expect(mail.locator(".mail-body")).to_contain_text("The address receives: 0.0099 BTC")
    expect(mail.locator(".mail-body")).to_contain_text(re.compile(r"the link works once, until \w{3} \d+, \d{4}, .* UTC\)"))
    expect(mail.locator('.mail-body a[href*="/security/freeze?token="]')).to_have_count(1)
    confirm_link = mail.locator('a[href*="/wallet/confirm-withdrawal?id="]').get_attribute("href")
    mail.locator('a[href*="/wallet/confirm-withdrawal?id="]').click()
    # the link's page shows what the button confirms; opening it (a mail scanner's fetch) confirmed nothing
    expect(page.locator("h1")).to_have_text("Confirm this withdrawal?")
    expect(page.locator("#wd-amount")).to_have_text("0.01 BTC")
    expect(page.locator("#wd-address")).to_have_text(dest["BTC"])
    shot(page, "6b-withdrawal-confirm-page")
    waiting = page.request.get(base + "/session/v3/capital/withdraw/history").json()
    assert [w["status"] for w in waiting] == [0], waiting
    page.click("#confirm-withdrawal")
    expect(page.locator("h1")).to_have_text("Withdrawal confirmed")
    page.goto(confirm_link)  # the link opened again: it says the withdrawal is confirmed, not that it failed
    expect(page.locator("h1")).to_have_text("Withdrawal already confirmed")
    expect(page.locator("#message")).to_have_text("This withdrawal is already confirmed; follow it on the withdraw page.")
    expect(page.locator("#next")).to_have_attribute("href", "/wallet/withdraw")
    expect(page.locator("#error-code")).to_have_count(0)
    page.goto(base + "/wallet/withdraw")
    wd = page.locator("#withdrawals .withdrawal").first
    expect(wd).to_have_attribute("data-status", "6", timeout=90_000)
    steps = wd.locator(".timeline li").all_inner_texts()
    assert steps[0].startswith("e-mail sent") and steps[-1].startswith("completed"), steps
    shot(page, "7-withdrawal-completed")
    assert chain_balance(server.data, "BTC", dest["BTC"]) == start + Decimal("0.0099")

    page.goto(base + "/wallet/history")
    expect(page.locator(f'#hist-deposits tr[data-txid="{txid}"] td.status')).to_have_text("final")
    expect(page.locator("#hist-withdrawals tr[data-status='6']")).to_have_count(1)
    shot(page, "8-history")

    # a second withdrawal, cancelled while it waits for the e-mail: status 1, the hold released;
    # a completed one cannot be cancelled (refused, nothing journaled)
    page.goto(base + "/wallet/withdraw")
    free_before = page.evaluate("call('GET', '/account').then(a => a.balances.find(b => b.asset === 'BTC').free)")
    page.select_option("#wd-coin", "BTC")
    page.select_option("#wd-address", dest["BTC"])
    page.fill("#wd-amount", "0.02")
    page.fill("#wd-code", fresh_code(totp))
    page.click("#wd-submit")
    expect(page.locator("#wd-status")).to_contain_text("e-mail sent")
    pending = page.locator("#withdrawals .withdrawal[data-status='0']")
    expect(pending).to_have_count(1)
    held = page.evaluate("call('GET', '/account').then(a => a.balances.find(b => b.asset === 'BTC').free)")
    assert Decimal(held) == Decimal(free_before) - Decimal("0.02")
    done_id = page.locator("#withdrawals .withdrawal[data-status='6']").first.get_attribute("data-id")
    before = last_seq(server)
    refused = page.evaluate("(id) => call('POST', '/capital/withdraw/cancel', {id}).then(() => 'ok', e => e.message)", done_id)
    assert "settled" in refused and "cancelled" in refused, refused
    assert last_seq(server) == before
    pending.locator("button.cancel").click()
    cancelled = page.locator("#withdrawals .withdrawal[data-status='1']")
    expect(cancelled).to_have_count(1)
    assert cancelled.locator(".timeline li").all_inner_texts()[-1].startswith("cancelled"), cancelled.inner_text()
    after = page.evaluate("call('GET', '/account').then(a => a.balances.find(b => b.asset === 'BTC').free)")
    assert Decimal(after) == Decimal(free_before)
    expect(page.locator("#withdrawals button.cancel")).to_have_count(0)
    shot(page, "9-withdrawal-cancelled")

    # remove the entry: withdrawals to it are refused again
    page.goto(base + "/wallet/withdraw")
    page.locator(f'#book tr[data-address="{dest["BTC"]}"] button.remove').click()
    expect(page.locator(f'#book tr[data-address="{dest["BTC"]}"]')).to_have_count(0)
    r = httpx.get(server.base + "/session/v3/addressBook")
    assert r.status_code == 401  # and without the session cookie nothing is shown
    assert not errors, errors
    context.close()


def test_a_quarantined_deposit_gets_its_source_of_funds_declaration_on_the_deposit_page(server, browser):  # noqa: F811
    """A deposit from the demo's tainted wallet is quarantined; the deposit page shows the
    source-of-funds form for it; a too-short declaration is refused with the field named and
    changes nothing; a real one is filed (the row's info says so, and the journal has it)."""
    context, page, errors = new_page(browser)
    base, email = server.web, "declarer@example.com"
    sign_up_by_http(context, base, email)
    page.goto(base + "/wallet/deposit")
    expect(page.locator("#whoami")).to_have_text(f"signed in as {email}")
    page.select_option("#dep-coin", "ETH")
    expect(page.locator("#dep-address")).to_have_text(re.compile(r"^0x[0-9a-fA-F]{40}$"))
    address = page.inner_text("#dep-address")
    expect(page.locator("#sof")).to_be_hidden()
    # in this process (`invoke`: no interpreter start); the newcomer's test pays as a process (`cli`)
    paid = invoke("chain", "pay", "--data", str(server.data), "--asset", "ETH", "--to", address, "--amount", "0.2", "--from", "tainted")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()
    row = page.locator(f'#deposits tr[data-txid="{txid}"]')
    expect(row).to_have_attribute("data-status", "8", timeout=30_000)
    expect(page.locator("#sof")).to_be_visible()
    expect(page.locator("#sof-txid")).to_have_value(txid)
    expect(page.locator("#sof-reason")).to_contain_text("blacklisted")

    before = last_seq(server)
    page.fill("#sof-text", "gift")
    page.click("#sof-submit")
    expect(page.locator("#sof-status")).to_contain_text("declaration")
    expect(page.locator("#sof-status")).to_contain_text("10 characters")
    # a refused declaration journals nothing (other workers may journal meanwhile: the deposit's own confirmations)
    later = invoke("journal", "sources", str(server.data), "--from-seq", str(before + 1))
    assert later.returncode == 0, later.stderr
    tags = [json.loads(line)["command"] for line in later.stdout.splitlines() if line.strip()]
    assert not [t for t in tags if "source_of_funds" in t], tags

    page.fill("#sof-text", "Salary from my employer, paid out of my own hardware wallet")
    page.click("#sof-submit")
    expect(page.locator("#sof-status")).to_have_text("declaration filed: an analyst reviews it")
    expect(page.locator("#sof-reason")).to_contain_text("source of funds declared", timeout=10_000)
    shot(page, "5-source-of-funds")
    assert errors == []
    context.close()


def test_adding_an_address_before_the_first_factor_is_confirmed_says_to_open_the_link(server, browser):  # noqa: F811
    """TOTP turned on but its e-mail link not opened yet: "Add address" is refused with a message that
    says to confirm the e-mailed link (in the page's language), not an unknown error; nothing is added."""
    context, page, errors = new_page(browser)
    base, email = server.web, "unconfirmed@example.com"
    totp = sign_up_by_http(context, base, email, confirm=False)
    fresh_code.last_step = int(time.time()) // TOTP_STEP_S  # type: ignore[attr-defined]  # the code that turned TOTP on
    page.goto(base + "/wallet/withdraw")
    page.select_option("#lang-select", "de")  # the message is the catalogue's (English: the msgid itself)
    page.wait_for_load_state()
    expect(page.locator("html")).to_have_attribute("lang", "de")
    page.select_option("#book-coin", "BTC")
    page.fill("#book-address", outside_addresses(server.data)["BTC"])
    page.fill("#book-code", fresh_code(totp))
    page.click("#book-add")
    expect(page.locator("#book-status")).to_contain_text("Ihr neuer zweiter Faktor ist noch nicht bestätigt: Öffnen Sie den Link")
    assert "RF_" not in page.inner_text("#book-status")
    assert page.evaluate("fetch('/session/v3/addressBook').then(r => r.json())")["entries"] == []
    assert not errors, errors
    context.close()


def test_the_lock_message_states_the_configured_duration() -> None:
    from ringfence.api.capital import _withdraw_error
    from ringfence.errors import WithdrawalsLocked

    for lock_s, words in ((86_400, "Within 24 hours after"), (600, "Within 10 minutes after"), (3600, "Within 1 hour after"),
                          (12, "Within 12 s after")):
        msg = _withdraw_error(WithdrawalsLocked("withdrawals are locked for 5 more s", lock_s=lock_s)).msg
        assert msg.startswith(words) and msg.endswith("(withdrawals are locked for 5 more s)"), msg
    # a lock set by a change of the address book: its own words, and its end (the engine's ns, identity's s)
    until_s = int(time.time()) + 500
    for end in ({"locked_until_ns": until_s * 10**9 - 1}, {"locked_until_s": until_s}):
        err = _withdraw_error(WithdrawalsLocked("withdrawals are locked for 500 more s after a recent security change "
                                                "(password, second factor or e-mail)", lock_s=600, change="withdrawal_address_changed", **end))
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until_s))
        left = re.fullmatch(r"Withdrawals are locked for 10 minutes after a change to your withdrawal address "
                            rf"book; they open again at {at} UTC \(in (\d+) s\)\.", err.msg)
        assert err.code == -4016 and left and 490 <= int(left.group(1)) <= 500, err.msg
    unknown_end = _withdraw_error(WithdrawalsLocked("withdrawals are locked", lock_s=600, change="withdrawal_address_changed")).msg
    assert unknown_end == "Withdrawals are locked for 10 minutes after a change to your withdrawal address book (withdrawals are locked).", unknown_end


def test_chain_pay_names_the_field_once(server) -> None:
    """`ringfence chain pay` refusals name the field once ("amount: exponent ...", not "amount: amount: ...").
    In this process (`invoke`); the newcomer's test runs `chain pay` as a process."""
    dest = outside_addresses(server.data)
    bad_amount = invoke("chain", "pay", "--data", str(server.data), "--asset", "BTC", "--to", dest["BTC"], "--amount", "1e3")
    assert bad_amount.returncode == 2 and bad_amount.stderr.startswith("error: amount: exponent notation"), bad_amount.stderr
    wrong_chain = invoke("chain", "pay", "--data", str(server.data), "--asset", "BTC", "--to", dest["ETH"], "--amount", "0.1")
    assert wrong_chain.returncode == 2 and wrong_chain.stderr.startswith("error: to: looks like an Ethereum address"), \
        wrong_chain.stderr


def test_the_wallet_address_leads_to_the_deposit_page(server) -> None:
    """`/wallet` (what people type) answers 303 to the deposit page, not a bare 404; signed out, the
    deposit page still answers (it shows "not signed in", a sign-in link and the halt banner)."""
    with httpx.Client(base_url=server.web, follow_redirects=False, verify=False) as client:
        root = client.get("/wallet")
        assert root.status_code == 303 and root.headers["location"] == "/wallet/deposit", root.status_code
        page = client.get("/wallet", follow_redirects=True)
        assert page.status_code == 200 and page.url.path == "/wallet/deposit" and 'id="signin-link"' in page.text


@pytest.mark.parametrize("path", ["/wallet/deposit", "/wallet/withdraw", "/wallet/history"])
def test_signed_out_the_wallet_pages_say_to_sign_in_with_a_link(server, browser, path):  # noqa: F811
    context, page, errors = new_page(browser)
    page.goto(server.web + path)
    note = page.locator("#signed-out-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Sign in to see your deposit addresses, withdraw and see your history.")
    expect(note.locator("#signed-out-sign-in")).to_have_attribute("href", f"/login?next={path}")  # back here after signing in
    expect(page.locator("#signin-link")).to_have_attribute("href", f"/login?next={path}")
    expect(page.locator("#deposit")).to_be_hidden()
    if path == "/wallet/deposit":
        shot(page, "0-signed-out")
    assert not errors, errors
    context.close()


def test_the_withdraw_page_says_withdrawals_are_locked_after_a_security_change_and_until_when(server, browser):  # noqa: F811
    """A new anti-phishing code locks withdrawals for LOCK_S: the withdraw page says so before a
    withdrawal is tried, naming the change and the lock's end (as /session/v3/me reports it)."""
    context, page, errors = new_page(browser)
    base, email = server.web, "locked@example.com"
    sign_up_by_http(context, base, email)
    page.goto(base + "/security")
    page.fill("#apc-code", "LOCK-77")
    changed_s = time.time()
    page.click("#set-apc")
    expect(page.locator("#apc")).to_have_text("LOCK-77")
    me = page.evaluate("fetch('/session/v3/me').then(r => r.json())")
    until_ms = me["withdrawalsLockedUntil"]
    assert changed_s + LOCK_S - 5 <= until_ms / 1000 <= time.time() + LOCK_S + 1, (me, changed_s)
    assert me["withdrawalsLockedBy"] == "anti-phishing code changed", me
    page.goto(base + "/wallet/withdraw")
    lock = page.locator("#wd-lock")
    expect(lock).to_be_visible()
    at = time.gmtime(until_ms // 1000)
    # the end as every page writes a time: the locale's medium date and time, then UTC
    end = f"{time.strftime('%b', at)} {at.tm_mday}, {at.tm_year}, {(at.tm_hour % 12) or 12}:{at.tm_min:02d}:{at.tm_sec:02d}"
    expect(lock).to_contain_text(f"Withdrawals are locked until {end}")
    expect(lock).to_contain_text("UTC (")
    expect(lock).to_contain_text("seconds from now) after a recent security change: anti-phishing code changed.")
    assert lock.get_attribute("data-until") == str(until_ms)
    # a lock without a recorded change (the server sends null) ends its sentence without a dangling ": ."
    def no_change(route):
        answer = route.fetch()
        route.fulfill(response=answer, json=dict(answer.json(), withdrawalsLockedBy=None))
    page.route("**/session/v3/me", no_change)
    page.reload()
    expect(lock).to_contain_text("seconds from now) after a recent security change.")
    assert "change:" not in lock.text_content(), lock.text_content()
    page.unroute("**/session/v3/me")
    page.reload()
    expect(lock).to_contain_text("after a recent security change: anti-phishing code changed.")
    # once the lock has ended the page says nothing more about it
    page.wait_for_timeout(max(0, until_ms - time.time() * 1000) + 500)
    expect(lock).to_be_hidden(timeout=15_000)
    assert page.evaluate("fetch('/session/v3/me').then(r => r.json())")["withdrawalsLockedUntil"] == 0
    assert not errors, errors
    context.close()


def test_signing_in_from_the_wallet_returns_to_the_wallet_and_next_is_a_path_on_this_site_only(server, browser):  # noqa: F811
    """The wallet's sign-in link carries `next=/wallet/withdraw`: after password and second factor the
    user is back on that page. A `next` that is not a path on this site (another host, a scheme) is
    ignored: the security centre, as before; never an open redirect."""
    from .test_web_session import PASSWORD

    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    base, email = server.web, "returner@example.com"
    totp = sign_up_by_http(context, base, email)
    fresh_code.last_step = int(time.time()) // TOTP_STEP_S  # type: ignore[attr-defined]
    context.clear_cookies()
    page.goto(base + "/wallet/withdraw")
    page.click("#signed-out-sign-in")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin")
    page.wait_for_url(base + "/login/2fa?next=/wallet/withdraw")
    page.fill("#code", fresh_code(totp))
    page.click("#verify-totp")
    page.wait_for_url(base + "/wallet/withdraw")
    expect(page.locator("#whoami")).to_have_text(f"signed in as {email}")
    context.close()
    with httpx.Client(base_url=base, follow_redirects=False, verify=False) as client:
        for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "wallet/withdraw", "/%0d%0aX: y\n"):
            form = client.get("/login", params={"next": bad})
            login_form = re.search(r'<form method="post" action="/login">.*?</form>', form.text, re.S)
            assert form.status_code == 200 and login_form and 'name="next"' not in login_form.group(0), bad
            answer = client.post("/login", data={"email": email, "password": PASSWORD, "next": bad},
                                 headers={"Origin": base})
            assert answer.status_code == 303 and answer.headers["location"] == "/login/2fa", (bad, answer.headers.get("location"))
        good = client.post("/login", data={"email": email, "password": PASSWORD, "next": "/wallet/history"}, headers={"Origin": base})
        assert good.status_code == 303 and good.headers["location"] == "/login/2fa?next=/wallet/history"
        assert 'name="next" value="/wallet/history"' in client.get("/login?next=/wallet/history").text
