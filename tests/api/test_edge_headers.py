"""Security headers on every page and proof file (issue #13 item 7), against a real `serve --demo`
process and in a real browser (Playwright driving Debian's Chromium): CSP with
`frame-ancestors 'none'` and no `'unsafe-inline'`, `X-Frame-Options: DENY`, `nosniff`; the pages
still work under their policy (no violation reported), cannot be framed by another origin, and
the dashboard cannot open a WebSocket to any origin but its own.

Reproduce by hand: `curl -sI localhost:8000/por/verify` shows the headers.
"""

from __future__ import annotations

import httpx
import pytest

from .test_dashboard import browser  # noqa: F401  (the module's Chromium fixture)

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False

HTML_PAGES = ["/", "/por", "/por/verify", "/login", "/signup", "/admin"]
OTHER = ["/por/root.json", "/por/reserves.json", "/api/v3/ping", "/openapi.json", "/dashboard/app.js", "/static/identity.js", "/static/identity.css", "/healthz", "/admin/assets/admin.js", "/admin/assets/admin.css"]


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@pytest.mark.parametrize("path", HTML_PAGES + OTHER)
def test_every_response_has_the_headers(server, path):
    r = httpx.get(server.base + path)
    if path.startswith("/admin"):  # the staff console needs a staff session: the redirect to sign in has the headers too
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), (path, r.status_code, r.headers.get("location"))
    else:
        assert r.status_code == 200, (path, r.status_code)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    csp = directives(r.headers["content-security-policy"])
    assert csp["frame-ancestors"] == ["'none'"], csp
    assert "'unsafe-inline'" not in r.headers["content-security-policy"] and "'unsafe-eval'" not in r.headers["content-security-policy"]
    assert csp.get("default-src") in (["'none'"], ["'self'"]), csp


def test_the_dashboard_connects_to_its_own_origin_only(server):
    r = httpx.get(server.base + "/")
    connect = directives(r.headers["content-security-policy"])["connect-src"]
    assert connect == ["'self'", f"ws://127.0.0.1:{server.port}"], connect
    # a Host header that is not a host is never echoed into the policy
    r = httpx.get(server.base + "/", headers={"Host": "evil.example; script-src *"})
    assert directives(r.headers["content-security-policy"])["connect-src"] == ["'self'"]


@pytest.mark.parametrize("path", HTML_PAGES)
def test_pages_work_under_their_policy_in_a_browser(server, browser, path):  # noqa: F811
    page = browser.new_page()
    violations, errors = [], []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.add_init_script("document.addEventListener('securitypolicyviolation', e => console.log('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))")
    page.goto(server.base + path)
    page.wait_for_load_state("networkidle")
    # the page's own styles applied: the identity pages' stylesheet moved out of an inline block
    if path in ("/login", "/signup"):
        assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none"
    if path == "/":
        page.locator("#markets button", has_text="BTCUSDT").wait_for()
    assert not violations and not errors, (violations, errors)
    page.close()


@pytest.mark.parametrize("path", ["/por/verify", "/por", "/", "/login"])
def test_no_page_can_be_framed_by_another_origin(server, browser, path):  # noqa: F811
    page = browser.new_page()
    # the framing page is served from localhost, the exchange from 127.0.0.1: two origins
    outer = server.base.replace("127.0.0.1", "localhost") + "/api/v3/ping"
    page.goto(outer)
    page.set_content(f'<iframe id="f" src="{server.base}{path}" width="600" height="400"></iframe>')
    page.wait_for_timeout(1500)
    child = [f for f in page.frames if f is not page.main_frame]
    assert child, "no iframe"
    # a blocked frame is an error page with no content of ours
    assert child[0].url != server.base + path or child[0].evaluate("document.body ? document.body.innerText.length : 0") == 0, child[0].url
    page.close()


def test_the_dashboard_cannot_open_a_websocket_to_another_origin(server, browser):  # noqa: F811
    page = browser.new_page()
    page.goto(server.base + "/")
    other = server.base.replace("http://127.0.0.1", "ws://localhost") + "/ws"
    blocked = page.evaluate(
        """url => new Promise(resolve => {
            document.addEventListener('securitypolicyviolation', e => resolve(e.violatedDirective), {once: true});
            try { const ws = new WebSocket(url); ws.onopen = () => resolve('opened'); } catch (e) { resolve('thrown: ' + e.name); }
            setTimeout(() => resolve('timeout'), 3000);
        })""",
        other,
    )
    assert blocked.startswith(("connect-src", "thrown")), blocked
    own = page.evaluate(
        """url => new Promise(resolve => { const ws = new WebSocket(url); ws.onopen = () => resolve('opened'); ws.onerror = () => resolve('error'); setTimeout(() => resolve('timeout'), 3000); })""",
        server.base.replace("http://", "ws://") + "/ws",
    )
    assert own == "opened"
    page.close()
