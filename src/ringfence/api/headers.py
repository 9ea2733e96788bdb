"""The HTTP security headers the exchange sends, in one place.

Every response carries `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and, unless the
page sets a stricter-for-itself policy, `Content-Security-Policy: default-src 'none';
frame-ancestors 'none'` — right for JSON, which no browser should render or frame. HTML pages set
their own policy without `'unsafe-inline'`: pages with inline `<script>`/`<style>` blocks (the
self-contained proof verifier and report, which must also work offline as single files) list
the SHA-256 of each block, computed from the bytes actually served; the dashboard allows scripts
and styles from its own origin and connects only to its own origin and that origin's WebSocket.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

__all__ = ["JSON_CSP", "SecurityHeaders", "dashboard_csp", "inline_page_csp", "secured_start"]

JSON_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_BASELINE = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", JSON_CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
)
#: A Host header we are willing to repeat in a policy: a DNS name or IP literal and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def secured_start(message: dict[str, Any]) -> dict[str, Any]:
    """An `http.response.start` message with each baseline header the response did not set itself
    added after its own (a new message: the one given is not changed)."""
    headers = list(message.get("headers", []))
    present = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in _BASELINE if name not in present]
    return {**message, "headers": headers}


class SecurityHeaders:
    """Pure ASGI middleware: add each baseline header that the response did not set itself
    (`secured_start`; api/app.py `HotRoutes` does the same for the routes it answers itself)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = secured_start(message)
            await send(message)

        await self.app(scope, receive, with_headers)


def _inline_hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions for each inline `<tag>` block (one without a `src` attribute)."""
    out = []
    for attrs, body in re.findall(rf"<{tag}(\s[^>]*)?>(.*?)</{tag}\s*>", html, flags=re.DOTALL | re.IGNORECASE):
        if "src=" in (attrs or "").lower():
            continue
        text = body.replace("\r\n", "\n").replace("\r", "\n")  # what the HTML parser hands the browser
        out.append("'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'")
    return out


def inline_page_csp(html: str) -> str:
    """A policy for a self-contained page: only its own inline blocks run, nothing is fetched."""
    scripts = " ".join(_inline_hashes(html, "script")) or "'none'"
    styles = " ".join(_inline_hashes(html, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src data:; connect-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def dashboard_csp(host: str | None, https: bool) -> str:
    """The dashboard's policy: its own origin, plus the WebSocket endpoint of that same origin."""
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" {'wss' if https else 'ws'}://{host}"
    return (
        f"default-src 'self'; connect-src {connect}; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
