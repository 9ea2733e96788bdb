"""Sign a staff member in to the console in the browser (issue 16, items 1-2): /login with the
member's e-mail and password, /login/2fa with their TOTP code; the session cookie belongs to the
`localhost` origin, where the console is then opened."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyotp


def demo_login(data: Path, staff_id: str) -> dict:
    """A demo member's login from `serve --demo`'s DIR/demo-staff.json."""
    (entry,) = [e for e in json.loads((data / "demo-staff.json").read_text())["staff"] if e["staff_id"] == staff_id]
    return entry["login"]


def staff_sign_in(page, base: str, login: dict) -> str:
    """Sign in at `base` (its 127.0.0.1 turned into localhost) and open /admin; returns the web origin.
    A TOTP step is used once per account: a second sign-in of the same member uses the next step's code."""
    web = base.replace("127.0.0.1", "localhost")
    page.goto(web + "/login")
    page.fill("#email", login["email"])
    page.fill("#password", login["password"])
    page.click("#signin")
    page.wait_for_url("**/login/2fa")
    totp = pyotp.TOTP(login["totp_secret"])
    for ahead in range(2):
        # this step's code; if an earlier sign-in of the member used it, the next step's (identity
        # accepts one step of clock drift), rather than waiting up to 30 s for the clock
        page.fill("#code", totp.at(time.time() + 30 * ahead))
        page.click("#verify-totp")
        page.wait_for_load_state()
        if "/login" not in page.url:
            break
        page.goto(web + "/login/2fa")
    assert "/login" not in page.url, page.inner_text("body")
    page.goto(web + "/admin")
    return web
