"""Synthetic typologies replayed through a live exchange's API, measured from its analyst endpoints.

`replay(base, data_dir, seed=, users=)` drives a running `ringfence serve --demo` as its users would:
every account is signed up on the sign-up page, confirmed from the e-mail (the demo's `/dev/mail`),
signs in, turns on an authenticator app and creates an API key in the security centre; it is funded
by a real deposit (the demo faucet pays its deposit address on the local chain) and trades, cancels
and reads its account through the Binance REST API. Each account has its own device (User-Agent)
and network (`X-Forwarded-For`, believed only from a proxy the server trusts: start it with
`--forwarded-allow-ips 127.0.0.1`). Nothing is written to the stream directly: every event the
rules see comes from the exchange's own code paths.

Seeded (`random.Random(seed)`): which accounts follow which typology, their devices, networks,
amounts and the order of their steps. The clock is the server's (the replay runs in minutes, not a
day), so the scores are not bit-for-bit reproducible across runs, but the labels and steps are.

Typologies replayed (`LIVE_TYPOLOGIES`), each with its confounder among the normal users:

* `account_takeover` — after the owner's usual sessions, a new device on a new network signs in with
  the password and a TOTP code, creates an API key, changes the password and explores the wallet
  endpoints with the new key. Confounder: a normal user's new phone on the home network, then an
  API key.
* `credential_stuffing` — wrong passwords for the account from a bot on a network it never used.
  Confounder: a normal user who forgets the password once or twice at home, then signs in.
* `wash_ring` — two or three accounts on one device (a farm) trading with each other. Confounder:
  two normal users who trade with each other, each from their own device.
* `spoofer` — orders of more than 10,000 USDT at the best bid, pulled unfilled within a second,
  again and again. Confounder: a normal user's large order placed 3% under the touch and pulled.
* `structuring` — a withdrawal address added on the wallet page (a TOTP code, the e-mailed link) and
  a withdraw key, then BTC withdrawals of 0.40-0.49 BTC through the API adding up to more than
  2.25 BTC. Confounder: a normal user who adds an address the same way and withdraws a little.
* `tainted_deposit` — an ETH deposit from the demo's tainted wallet (one hop from a blacklisted
  address). Confounder: every account's own deposit from the faucet.
* `pump` — 2-3 accounts on one device and a thin market of their own: the operator quorum (the demo's
  ada and ben) lists a new ETH/USDT market with no price band (`ringfence market add`, signed by both),
  two normal users make it (one rests a ladder of asks from 20.00 up to 26.00 funded by an ETH deposit,
  the other a ladder of bids from 19.50 down), the group accumulates at 20.00, buys the ladder up 30%
  in a burst, then dumps into the bids. Confounder: a legitimate large buyer on a thin market of
  its own who buys the same ladder up the same way and holds; the price then falls as much, but
  another holder (the ask maker) sells it down.

The measure: once the worker has scored every event (`GET /admin/v1/monitoring`: no lag, no cluster
check pending), the alerts of the rules in `synth.CATCHES` are read back from `GET /admin/v1/alerts`
(signed by an analyst), restricted to this replay's accounts, and scored per typology as
`synth.score_typologies` does. The server must run the rules with a short `settle_s` for its
behaviour rules (the replay compresses hours into seconds): `replay_rules()` writes the shipped
rule set with `settle_s` = 1 and their window at most `WINDOW_S`; and, for the withdrawals, a new
address must cool 0 s (`RINGFENCE_CUSTODY_ADDRESS_COOLING_S=0`) and a credential change lock them
for 1 s (`RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S=1`), not a day.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from .synth import CATCHES

__all__ = ["LIVE_TYPOLOGIES", "Actor", "replay", "replay_rules", "plan", "score"]

LIVE_TYPOLOGIES = ("account_takeover", "credential_stuffing", "wash_ring", "spoofer", "structuring", "tainted_deposit", "pump")
MIN_USERS = 20
PASSWORD = "replay correct horse battery 42"
NEW_PASSWORD = "replay taken over battery staple 43"
SYMBOL = "BTCUSDT"
ORIGIN = [""]  # the web pages' origin (the server's public URL) when it is not the base URL with localhost for 127.0.0.1
WINDOW_S = 10  # the behaviour rules' window in the replay's compressed time (replay_rules)


@dataclass
class Actor:
    n: int
    typology: str  # "" for a normal user
    email: str
    device: str
    ip: str
    role: str = ""  # a normal user's confounder: new_phone, forgetful, pair, big_order, withdrawer, big_buyer; or ask_maker,
    # bid_maker (the thin markets' liquidity)
    group: int = -1  # a wash ring's, pump group's or trading pair's number
    account_id: str = ""
    api_key: str = ""
    api_secret: str = ""
    totp_secret: str = ""
    totp_step: int = 0
    cookies: dict[str, str] = field(default_factory=dict)


def replay_rules(path: Path) -> Path:
    """The shipped rule set with time compressed for a replay that runs in a minute what the generator
    spreads over a day: every behaviour rule's `settle_s` at 1 s (a device used a second ago is
    familiar) and its window at most `WINDOW_S` (an account's first hour — its first orders, first
    endpoints — is over before its later activity starts; the replay waits `WINDOW_S` between them)."""
    from importlib import resources

    rules = json.loads(resources.files("ringfence.monitoring").joinpath("data/default-rules.json").read_text())
    for rule in rules["rules"]:
        if rule["type"] == "behaviour":
            rule["settle_s"] = 1
            rule["window_s"] = min(rule["window_s"], WINDOW_S)
    path.write_text(json.dumps(rules, indent=1))
    return path


def plan(seed: int, users: int, run: str = "") -> list[Actor]:
    """Who is who: about 3% of the accounts per typology, at least one (wash rings and pump groups of
    2-3: twice as many), the rest normal users, as many of whom carry each confounder as there are
    accounts per typology (a trading pair: two), and two make the thin markets (an ask maker, a bid
    maker). Deterministic for a seed; `run` only makes the e-mail addresses unique on a server that
    saw an earlier replay."""
    if users < MIN_USERS:
        raise ValueError(f"at least {MIN_USERS} users (one per typology, a wash ring, a pump group, and normal users with their "
                         "confounders and the thin markets' two makers)")
    rng = random.Random(seed)
    tag = f"{seed}x{rng.randrange(16**6):06x}{run}"
    per = max(1, users * 3 // 100)
    kinds: list[tuple[str, int]] = []
    for typ in LIVE_TYPOLOGIES:
        if typ in ("wash_ring", "pump"):
            ring = 0
            while sum(1 for k, _ in kinds if k == typ) < max(2, per * 2):
                kinds += [(typ, ring)] * rng.choice((2, 3))
                ring += 1
        else:
            kinds += [(typ, -1)] * per
    normal = users - len(kinds)
    if normal < 7 * per + 2:
        raise ValueError(f"{users} users leave {normal} normal users; at least {7 * per + 2} are needed for the confounders "
                         "and the makers")
    actors: list[Actor] = []
    farm = {(t, g): f"{'farm' if t == 'wash_ring' else 'pump'}/{rng.randrange(10**9)}" for t, g in kinds if g >= 0}
    slots = kinds + [("", -1)] * normal
    rng.shuffle(slots)
    for n, (typ, group) in enumerate(slots):
        ip = f"{rng.choice((81, 82, 88, 93, 94))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        device = farm[(typ, group)] if group >= 0 else f"app/{rng.randrange(10**9)}"
        actors.append(Actor(n, typ, f"replay{tag}n{n}@example.com", device, ip, group=group))
    plain = [a for a in actors if not a.typology]
    roles = (["new_phone"] * per + ["forgetful"] * per + ["big_order"] * per + ["withdrawer"] * per + ["big_buyer"] * per
             + ["pair"] * (2 * per) + ["ask_maker", "bid_maker"])  # as many as each typology; the thin markets' makers
    for a, role in zip(rng.sample(plain, len(plain)), roles + [""] * len(plain)):
        a.role = role
    for i, a in enumerate(x for x in actors if x.role == "pair"):
        a.group = i // 2
    return actors


# ---------------------------------------------------------------- the web (sign-up, security centre)


class _Web:
    """httpx with the session cookies carried by hand (they are `Secure`, which the standard jar
    will not send over http://127.0.0.1), as one device on one network."""

    def __init__(self, http: httpx.Client, actor: Actor, device: str = "", ip: str = "") -> None:
        self.http, self.actor = http, actor
        self.headers = {"User-Agent": device or actor.device, "X-Forwarded-For": ip or actor.ip}
        self.cookies = actor.cookies if not device and not ip else {}

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **(kw.pop("headers", None) or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        r = self.http.request(method, path, headers=headers, **kw)
        keep_cookies(self.cookies, r)
        return r


def keep_cookies(cookies: dict[str, str], r: httpx.Response) -> None:
    """Fold a response's `Set-Cookie` lines into `cookies` (name -> value), dropping the ones it
    clears (empty, or `Max-Age=0`): the jar of a client that carries `Secure` cookies by hand."""
    for line in r.headers.get_list("set-cookie"):
        name, _, rest = line.partition("=")
        value = rest.split(";", 1)[0]
        if value and "max-age=0" not in line.lower():
            cookies[name.strip()] = value
        else:
            cookies.pop(name.strip(), None)


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    if not m:
        raise RuntimeError("no CSRF token on the page: " + html[:300])
    return m.group(1)


def _mailed_link(web: _Web, email: str, path: str, timeout_s: int = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        page = web.request("GET", "/dev/mail").text
        links = [unescape(m.group(1)) for section in page.split('<section class="mail" data-to="')[1:]
                 if section.split('"', 1)[0] == email
                 for m in re.finditer(r'href="([^"]*' + re.escape(path) + r'\?token=[^"]+)"', section)]
        if links:
            return links[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no mail with a {path} link for {email} at /dev/mail")
        time.sleep(0.5)


def _follow_link(web: _Web, link: str, what: str) -> httpx.Response:
    """Open an e-mailed link as a person does: its GET shows a page and changes nothing, its button
    POSTs the page's form (the link's token, hidden fields) to the same path."""
    parts = urlsplit(link)
    page = _check(web.request("GET", parts.path + "?" + parts.query), what).text
    form = re.search(r'<form method="post" action="(' + re.escape(parts.path) + r')">(.*?)</form>', page, re.S)
    if not form:
        raise RuntimeError(f"{what}: no confirm button on the link's page")
    fields = {unescape(n): unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(2))}
    return _check(web.request("POST", unescape(form.group(1)), data=fields), what)


def _check(r: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> httpx.Response:
    if r.status_code not in ok:
        raise RuntimeError(f"{what}: HTTP {r.status_code} {r.text[:300]}")
    return r


def _totp_code(a: Actor) -> str:
    """The account's next unused TOTP code: a code is accepted once (a replay is refused and a wrong
    code is a `second_factor_failed` event), so each use takes a later 30 s step than the last, the
    next step's code when this one's is spent (accepted one step early), waiting if both are."""
    import pyotp

    while True:
        now = time.time_ns() // 10**9 // 30
        step = max(now, a.totp_step + 1)
        if step <= now + 1:
            break
        time.sleep(1)
    a.totp_step = step
    return str(pyotp.TOTP(a.totp_secret).at(step * 30))


def _sign_in(web: _Web, a: Actor, password: str, second_factor: bool = True) -> httpx.Response:
    r = web.request("POST", "/login", data={"email": a.email, "password": password})
    if r.status_code == 303 and r.headers.get("location", "").endswith("/login/2fa") and second_factor:
        r = web.request("POST", "/login/2fa", data={"method": "totp", "code": _totp_code(a)})
    return r


def _enrol(http: httpx.Client, a: Actor) -> None:
    """Sign up, confirm the e-mail, sign in, turn on TOTP (confirmed from the e-mail), create an API key."""
    web = _Web(http, a)
    _check(web.request("POST", "/signup", data={"email": a.email, "password": PASSWORD}), "sign-up")
    _follow_link(web, _mailed_link(web, a.email, "/verify-email"), "verify e-mail")
    _check(_sign_in(web, a, PASSWORD, second_factor=False), "sign-in", (200, 303))
    page = web.request("GET", "/security").text
    setup = _check(web.request("POST", "/security/totp/begin", data={"csrf_token": _csrf(page)}), "totp begin").text
    m = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', setup)
    if not m:
        raise RuntimeError("no TOTP secret on the set-up page")
    a.totp_secret = m.group(1)
    _check(web.request("POST", "/security/totp/confirm", data={"csrf_token": _csrf(setup), "code": _totp_code(a)}),
           "totp confirm")
    token = parse_qs(urlsplit(_mailed_link(web, a.email, "/security/confirm-factor")).query)["token"][0]
    _check(web.request("POST", "/security/confirm-factor", data={"token": token}), "confirm factor")
    a.api_key, a.api_secret = _create_key(web, "replay bot")
    acct = _check(_api(http, a, "GET", "/api/v3/account", {}), "account").json()
    a.account_id = str(acct.get("uid") or acct.get("accountId") or "")
    if not a.account_id:
        raise RuntimeError("the account id is not on /api/v3/account: " + json.dumps(acct)[:300])


def _create_key(web: _Web, label: str, scopes: tuple[str, ...] = ("read", "trade"), allow: str = "") -> tuple[str, str]:
    page = web.request("GET", "/security").text
    r = _check(web.request("POST", "/security/api-keys", data={"csrf_token": _csrf(page), "label": label, "scopes": list(scopes),
                                                               "kind": "hmac", "ip_allowlist": allow}), "create API key")
    key = re.search(r'id="api-key"[^>]*>([0-9a-f]{64})<', r.text)
    secret = re.search(r'id="api-secret"[^>]*>([0-9a-f]{64})<', r.text)
    if not key or not secret:
        raise RuntimeError("no key on the API key page")
    return key.group(1), secret.group(1)


# ---------------------------------------------------------------- the Binance API

_last_ts = [0]


def _api(http: httpx.Client, a: Actor, method: str, path: str, params: dict[str, str], *, device: str = "", ip: str = "",
         key: tuple[str, str] | None = None) -> httpx.Response:
    api_key, secret = key or (a.api_key, a.api_secret)
    ts = max(time.time_ns() // 10**6, _last_ts[0] + 1)
    _last_ts[0] = ts
    payload = urlencode({**params, "timestamp": str(ts), "recvWindow": "20000"})
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": api_key, "User-Agent": device or a.device, "X-Forwarded-For": ip or a.ip}
    body = f"{payload}&signature={sig}"
    if method == "GET" or method == "DELETE":
        return http.request(method, f"{path}?{body}", headers=headers)
    return http.request(method, path, content=body, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})


def _book(http: httpx.Client) -> tuple[int, int]:
    """Best bid and ask of BTCUSDT in cents (the market's tick is 0.01)."""
    d = _check(http.get("/api/v3/depth", params={"symbol": SYMBOL, "limit": 5}), "depth").json()
    return _cents(d["bids"][0][0]), _cents(d["asks"][0][0])


def _cents(price: str) -> int:
    whole, _, frac = price.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _order(http: httpx.Client, a: Actor, **params: str) -> dict[str, Any]:
    r = _api(http, a, "POST", "/api/v3/order", {"symbol": SYMBOL, **params})
    return _check(r, f"order by {a.n}").json()  # type: ignore[no-any-return]


def _cancel(http: httpx.Client, a: Actor, order_id: int) -> None:
    _check(_api(http, a, "DELETE", "/api/v3/order", {"symbol": SYMBOL, "orderId": str(order_id)}), "cancel")


# ---------------------------------------------------------------- funding (real deposits on the demo chain)


def _fund(http: httpx.Client, data_dir: Path, a: Actor, coin: str, amount: str, source: str = "faucet") -> None:
    addr = _check(_api(http, a, "GET", "/sapi/v1/capital/deposit/address", {"coin": coin}), "deposit address").json()["address"]
    admin = json.loads((data_dir / "custody" / "admin.json").read_text())
    _check(http.post("/v1/demo/chain/pay", json={"asset": coin, "to": addr, "amount": amount, "from": source},
                     headers={"Authorization": f"Bearer {admin['token']}"}), "faucet pay")


def _free(http: httpx.Client, a: Actor, coin: str) -> int:
    acct = _check(_api(http, a, "GET", "/api/v3/account", {}), "account").json()
    for b in acct["balances"]:
        if b["asset"] == coin:
            return _cents(b["free"])
    return 0


def _funded(http: httpx.Client, a: Actor, coin: str = "USDT") -> bool:
    return _free(http, a, coin) > 0


def _deposited(http: httpx.Client, a: Actor, coin: str) -> bool:
    rows = _check(_api(http, a, "GET", "/sapi/v1/capital/deposit/hisrec", {"coin": coin}), "deposit history").json()
    return any(r.get("status") not in (0, None) for r in rows)


def _wait(what: str, fn: Callable[[], bool], timeout_s: int = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


# ---------------------------------------------------------------- the typologies


def _normal(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    """Ordinary use from the home device: read the account, buy a little from the market maker, rest an
    order far from the touch and cancel it."""
    for _ in range(rng.randrange(2, 5)):
        _check(_api(http, a, "GET", rng.choice(("/api/v3/account", "/api/v3/openOrders")), {}), "read")
    _order(http, a, side="BUY", type="MARKET", quantity="0.0010")
    bid, _ = _book(http)
    o = _order(http, a, side="BUY", type="LIMIT", timeInForce="GTC", price=_price(bid * 95 // 100), quantity="0.0010")
    _cancel(http, a, int(o["orderId"]))


def _new_phone(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    """A legitimate new phone on the home network, then an API key for a bot."""
    phone = _Web(http, a, device=f"phone/{rng.randrange(10**9)}", ip=a.ip)
    _check(_sign_in(phone, a, PASSWORD), "new phone sign-in", (200, 303))
    _create_key(phone, "new phone bot")


def _forgetful(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    web = _Web(http, a)
    for _ in range(rng.randrange(1, 3)):
        _check(web.request("POST", "/login", data={"email": a.email, "password": "not my password"}), "wrong password", (401, 429))
    _check(_sign_in(web, a, PASSWORD), "sign-in after forgetting", (200, 303))


def _trade_pair(http: httpx.Client, seller: Actor, buyer: Actor) -> None:
    """seller rests a small sell inside the spread, buyer takes it: a trade between the two."""
    _order(http, seller, side="BUY", type="MARKET", quantity="0.0010")  # something to sell
    bid, ask = _book(http)
    price = _price((bid + ask) // 2 if ask - bid > 2 else ask)
    _order(http, seller, side="SELL", type="LIMIT", timeInForce="GTC", price=price, quantity="0.0010")
    out = _order(http, buyer, side="BUY", type="LIMIT", timeInForce="IOC", price=price, quantity="0.0010")
    if not out.get("fills"):
        raise RuntimeError(f"the pair's trade did not fill: {out}")


def _big_order(http: httpx.Client, a: Actor) -> None:
    """A large order 3% under the touch, pulled: not spoofing (far from the touch)."""
    bid, _ = _book(http)
    o = _order(http, a, side="BUY", type="LIMIT", timeInForce="GTC", price=_price(bid * 97 // 100), quantity="0.1700")
    _cancel(http, a, int(o["orderId"]))


def _spoof(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    for _ in range(rng.randrange(3, 6)):
        bid, _ = _book(http)
        o = _order(http, a, side="BUY", type="LIMIT", timeInForce="GTC", price=_price(bid), quantity="0.1700")
        time.sleep(rng.randrange(50, 400) / 1000)  # float-ok: a pause, not money
        _cancel(http, a, int(o["orderId"]))


def _stuff(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    bot = _Web(http, a, device=f"bot/{rng.randrange(100)}.0", ip=f"45.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    for _ in range(rng.randrange(4, 7)):
        _check(bot.request("POST", "/login", data={"email": a.email, "password": f"guess{rng.randrange(10**6)}"}),
               "stuffing attempt", (401, 429))


def _take_over(http: httpx.Client, a: Actor, rng: random.Random) -> None:
    device, ip = f"evil/{rng.randrange(10**6)}", f"185.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    web = _Web(http, a, device=device, ip=ip)
    _check(_sign_in(web, a, PASSWORD), "intruder sign-in", (200, 303))
    key = _create_key(web, "intruder")
    page = web.request("GET", "/security").text
    _check(web.request("POST", "/security/password", data={"csrf_token": _csrf(page), "current_password": PASSWORD,
                                                           "new_password": NEW_PASSWORD}), "password change", (200, 303))
    for path, params in (("/sapi/v1/capital/config/getall", {}), ("/sapi/v1/capital/deposit/address", {"coin": "BTC"}),
                         ("/api/v3/account", {})):
        _check(_api(http, a, "GET", path, params, device=device, ip=ip, key=key), "intruder API call")


def _outside_btc_address(data_dir: Path) -> str:
    """An address outside the replay's accounts on the local chain: the demo's own withdrawal entry."""
    entries = json.loads((data_dir / "demo-keys.json").read_text())
    return str(next(e["withdraw_addresses"]["BTC"] for e in entries if e.get("withdraw_addresses")))


def _address_book(http: httpx.Client, a: Actor, address: str) -> tuple[str, str]:
    """Add a BTC withdrawal address on the wallet page's session API (a TOTP code, then the e-mailed
    link), and create a withdraw key restricted to the account's own address; returns the key."""
    web = _Web(http, a)
    origin = {"Origin": ORIGIN[0] or str(http.base_url).rstrip("/").replace("//127.0.0.1:", "//localhost:")}
    me = _check(web.request("GET", "/session/v3/me", headers=origin), "session").json()
    _check(web.request("POST", "/session/v3/addressBook", headers={**origin, "X-CSRF-Token": me["csrfToken"]},
                       data={"coin": "BTC", "network": "BTC", "address": address, "code": _totp_code(a)}), "address book")
    _follow_link(web, _mailed_link(web, a.email, "/wallet/confirm-address"), "confirm address")
    return _create_key(web, "withdrawals", ("read", "withdraw"), f"{a.ip}/32")


def _withdraw(http: httpx.Client, a: Actor, key: tuple[str, str], address: str, amount: str) -> None:
    """A BTC withdrawal through the API; retried for a few seconds while the withdrawal lock that the
    address and key changes set (the replay server's short `RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S`) lasts."""
    deadline = time.monotonic() + 30
    while True:
        r = _api(http, a, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "network": "BTC", "address": address, "amount": amount}, key=key)
        if r.status_code == 200 or time.monotonic() > deadline:
            _check(r, f"withdrawal by {a.n}")
            return
        time.sleep(1)


def _structure(http: httpx.Client, a: Actor, key: tuple[str, str], address: str, rng: random.Random) -> None:
    """Withdrawals each below 0.5 BTC adding up to more than 2 BTC."""
    total = 0
    while total <= 2 * 10**8 + 10**8 // 4:
        amount = rng.randrange(40, 50) * 10**6  # 0.40-0.49 BTC
        total += amount
        _withdraw(http, a, key, address, f"0.{amount // 10**6:02d}")


# ---------------------------------------------------------------- thin markets (pump and dump)

THIN_OPEN = 2000  # the thin markets' opening price, cents of USDT per ETH
THIN_LADDER = (2100, 2200, 2300, 2400, 2500, 2600)  # the ask maker's ladder above it: +30% at the top
THIN_BIDS = (1950, 1900, 1850, 1800)  # the bid maker's ladder below it: 25% under the top and lower
THIN_STEP = "0.5000"  # ETH per ladder level
THIN_BID = "1.5000"  # ETH per bid level


def _eth(lots: int) -> str:
    """ETH in 0.0001 (the thin markets' lot) as a decimal string."""
    return f"{lots // 10**4}.{lots % 10**4:04d}"


def _lots(http: httpx.Client, a: Actor, coin: str) -> int:
    """The account's free balance of `coin` in 0.0001, rounded down."""
    acct = _check(_api(http, a, "GET", "/api/v3/account", {}), "account").json()
    for b in acct["balances"]:
        if b["asset"] == coin:
            whole, _, frac = b["free"].partition(".")
            return int(whole) * 10**4 + int((frac + "0000")[:4])
    return 0


def _list_thin_market(base: str, data_dir: Path, symbol: str, operators: tuple[str, str] = ("ada", "ben")) -> None:
    """List a new ETH/USDT market with no price band by the operator quorum: `ringfence market add`
    signed by two operators of the demo's staff key file (ListMarketSigned through POST /admin/v1/markets)."""
    import typer

    from ..cli import app

    keys = [a for who in operators for a in ("--key", f"{data_dir / 'demo-staff.json'}#{who}")]
    args = ["market", "add", symbol, "--base", "ETH", "--quote", "USDT", "--tick-size", "0.01", "--lot-size", "0.0001",
            "--min-notional", "1", "--band-ppm", "0", "--reason", f"replay: a thin market {symbol}", *keys, "--url", base]
    rc = typer.main.get_command(app).main(args, standalone_mode=False)
    if rc not in (None, 0):
        raise RuntimeError(f"listing {symbol}: `ringfence market add` exited {rc}")


def _make_thin_market(http: httpx.Client, symbol: str, ask_maker: Actor, bid_maker: Actor, opening: str) -> None:
    """The makers' ladders: `opening` ETH asked at the opening price and `THIN_STEP` at each level up
    to +30%; `THIN_BID` bid at each level from 2.5% under the opening price down."""
    for cents, qty in ((THIN_OPEN, opening), *((c, THIN_STEP) for c in THIN_LADDER)):
        _order(http, ask_maker, symbol=symbol, side="SELL", type="LIMIT", timeInForce="GTC", price=_price(cents), quantity=qty)
    for cents in THIN_BIDS:
        _order(http, bid_maker, symbol=symbol, side="BUY", type="LIMIT", timeInForce="GTC", price=_price(cents), quantity=THIN_BID)


def _take(http: httpx.Client, a: Actor, symbol: str, side: str, cents: int, qty: str) -> None:
    out = _order(http, a, symbol=symbol, side=side, type="LIMIT", timeInForce="IOC", price=_price(cents), quantity=qty)
    if not out.get("fills"):
        raise RuntimeError(f"{a.n}'s {side} on {symbol} at {_price(cents)} did not fill: {out}")


def _pump_and_dump(http: httpx.Client, group: list[Actor], symbol: str, ask_maker: Actor, bid_maker: Actor) -> None:
    """The group accumulates at the opening price, buys the ladder up 30% in a burst (taking turns),
    then each sells everything it bought into the bids."""
    _make_thin_market(http, symbol, ask_maker, bid_maker, _eth(5000 * len(group)))
    for a in group:
        _take(http, a, symbol, "BUY", THIN_OPEN, "0.5000")
    for i, cents in enumerate(THIN_LADDER):
        _take(http, group[i % len(group)], symbol, "BUY", cents, THIN_STEP)
    for a in group:  # what it holds after the taker fees, in whole lots
        _take(http, a, symbol, "SELL", THIN_BIDS[-1], _eth(_lots(http, a, "ETH")))


def _big_buy(http: httpx.Client, buyer: Actor, symbol: str, ask_maker: Actor, bid_maker: Actor) -> None:
    """A legitimate large buyer takes the opening offer and the whole ladder, and holds; the ask maker
    then sells what it has left into the bids: the same price path, sold down by someone else."""
    _make_thin_market(http, symbol, ask_maker, bid_maker, "1.0000")
    _take(http, buyer, symbol, "BUY", THIN_OPEN, "1.0000")
    for cents in THIN_LADDER:
        _take(http, buyer, symbol, "BUY", cents, THIN_STEP)
    _take(http, ask_maker, symbol, "SELL", THIN_BIDS[-1], THIN_BID)


def replay(base: str, data_dir: Path, *, seed: int, users: int, staff_key: str = "", log: Callable[[str], None] = print,
           workers: int = 4) -> dict[str, Any]:
    """Run the typologies against the live server at `base` (its data directory `data_dir` holds the
    demo faucet's token and, by default, the demo staff keys) and return the precision/recall table
    read back from its analyst endpoints."""
    rng = random.Random(seed)
    actors = plan(seed, users, run=f"r{time.time_ns() % 10**9:09d}")
    started = time.monotonic()
    http = httpx.Client(base_url=base, timeout=60)
    staff = staff_key or f"{data_dir / 'demo-staff.json'}#cy"
    before = _status(http, staff)["alerts_total"]
    log(f"replay seed={seed} users={users}: {sum(1 for a in actors if a.typology)} abusive accounts; enrolling")
    with ThreadPoolExecutor(workers * 4) as pool:  # mostly waiting for the e-mails (delivered every 2 s)
        list(pool.map(lambda a: _enrol(http, a), actors))
    log(f"enrolled {len(actors)} accounts in {time.monotonic() - started:.0f} s; funding")  # float-ok: seconds
    # who withdraws adds an address to the book now, while the deposits confirm: in production the address
    # cools for a day before it can be used, so its addition is never in the same hour as the withdrawals
    movers = [a for a in actors if a.typology == "structuring" or a.role == "withdrawer"]
    outside = _outside_btc_address(data_dir)
    with ThreadPoolExecutor(workers) as pool:
        wkeys = dict(zip([a.n for a in movers], pool.map(lambda a: _address_book(http, a, outside), movers)))
    booked = time.monotonic()
    # the thin markets: one per pump group and one per large-buyer confounder, listed by the operator quorum
    pump_groups: dict[int, list[Actor]] = {}
    for a in actors:
        if a.typology == "pump":
            pump_groups.setdefault(a.group, []).append(a)
    thin: list[tuple[list[Actor] | None, Actor | None]] = [(g, None) for g in pump_groups.values()]
    thin += [(None, a) for a in actors if a.role == "big_buyer"]
    mark = hashlib.sha256(actors[0].email.encode()).hexdigest()[:8].upper()
    symbols = [f"T{i}X{mark}USDT" for i in range(len(thin))]
    for symbol in symbols:
        _list_thin_market(base, data_dir, symbol)
    [ask_maker] = [a for a in actors if a.role == "ask_maker"]
    [bid_maker] = [a for a in actors if a.role == "bid_maker"]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda a: _fund(http, data_dir, a, "USDT", "20000" if a.typology == "spoofer" or a.role == "big_order" else
                                      "2000" if a.role == "bid_maker" else "500"), actors))
        list(pool.map(lambda a: _fund(http, data_dir, a, "BTC", "3.2" if a.typology == "structuring" else "0.2"), movers))
    _fund(http, data_dir, ask_maker, "ETH", str(6 * len(thin) + 2))
    for a in actors:
        _wait(f"the deposit of {a.n}", functools.partial(_funded, http, a))
    for a in movers:
        _wait(f"the BTC deposit of {a.n}", functools.partial(_funded, http, a, "BTC"))
    _wait("the ask maker's ETH deposit", functools.partial(_funded, http, ask_maker, "ETH"))
    time.sleep(max(0, booked + WINDOW_S + 1 - time.monotonic()))  # the address book is history too (see below)
    log(f"funded at {time.monotonic() - started:.0f} s; normal activity")  # float-ok: seconds
    per_actor = {a.n: random.Random(rng.randrange(2**32)) for a in actors}
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda a: _normal(http, a, per_actor[a.n]), actors))
    # "later that day": past the replay rules' behaviour window (and their settle_s), so the accounts' onboarding
    # is history the model learnt, not part of what it scores next
    time.sleep(WINDOW_S + 1)
    # confounders
    pairs: dict[int, list[Actor]] = {}
    for a in actors:
        if a.role == "pair":
            pairs.setdefault(a.group, []).append(a)
    for seller, buyer in pairs.values():
        _trade_pair(http, seller, buyer)
    for a in actors:
        r = per_actor[a.n]
        if a.role == "new_phone":
            _new_phone(http, a, r)
        elif a.role == "forgetful":
            _forgetful(http, a, r)
        elif a.role == "big_order":
            _big_order(http, a)
        elif a.role == "withdrawer":  # one modest withdrawal to the new address
            _withdraw(http, a, wkeys[a.n], outside, f"0.0{r.randrange(1, 10)}")
    for (_pumpers, large), symbol in zip(thin, symbols):
        if large is not None:
            _big_buy(http, large, symbol, ask_maker, bid_maker)
    log(f"typologies at {time.monotonic() - started:.0f} s")  # float-ok: seconds
    rings: dict[int, list[Actor]] = {}
    for a in actors:
        if a.typology == "wash_ring":
            rings.setdefault(a.group, []).append(a)
    for ring in rings.values():
        for i in range(len(ring)):
            _trade_pair(http, ring[i], ring[(i + 1) % len(ring)])
    for (group, _buyer), symbol in zip(thin, symbols):
        if group is not None:
            _pump_and_dump(http, group, symbol, ask_maker, bid_maker)
    for a in actors:
        r = per_actor[a.n]
        if a.typology == "account_takeover":
            _take_over(http, a, r)
        elif a.typology == "credential_stuffing":
            _stuff(http, a, r)
        elif a.typology == "spoofer":
            _spoof(http, a, r)
        elif a.typology == "structuring":
            _structure(http, a, wkeys[a.n], outside, r)
        elif a.typology == "tainted_deposit":
            _fund(http, data_dir, a, "ETH", "0.5", source="tainted")
    for a in actors:
        if a.typology == "tainted_deposit":  # confirmed and credited (into quarantine: its KYT score is above the line)
            _wait(f"the tainted deposit of {a.n}", functools.partial(_deposited, http, a, "ETH"))
    log(f"waiting for the worker to score every event at {time.monotonic() - started:.0f} s")  # float-ok: seconds
    _wait("the monitoring worker", lambda: _caught_up(http, staff), timeout_s=180)
    alerts = _alerts(http, staff)
    http.close()
    table = score(alerts, actors)
    return {"seed": seed, "users": users, "thin_markets": symbols, "accounts": {a.account_id: a.typology or (a.role or "normal") for a in actors},
            "alerts_before": before, "alerts_read": len(alerts), "seconds": int(time.monotonic() - started), "typologies": table}


def _admin(http: httpx.Client, staff_key: str, path: str) -> Any:
    from ..staff.decisions import read_key_file
    from ..staff.requests import signed_headers

    file, _, who = staff_key.partition("#")
    key = read_key_file(Path(file), who)
    full, _, query = path.partition("?")
    return _check(http.get(path, headers=signed_headers(key, "GET", full, query, b"")), "admin " + full).json()


def _status(http: httpx.Client, staff_key: str) -> dict[str, Any]:
    return _admin(http, staff_key, "/admin/v1/monitoring")  # type: ignore[no-any-return]


def _caught_up(http: httpx.Client, staff_key: str) -> bool:
    """The worker scored every event written, nothing is queued, no cluster check is due — twice, a
    second apart, with nothing written in between (an event taken off the queue is being written)."""
    def once() -> dict[str, Any] | None:
        s = _status(http, staff_key)
        ok = s["lag_events"] == 0 and s["outbox"]["queued"] == 0 and not s["linking"]["pending"]
        return s if ok else None

    first = once()
    if first is None:
        return False
    time.sleep(1)
    second = once()
    return bool(second and second["newest_event"] == first["newest_event"] and second["outbox"]["written"] == first["outbox"]["written"])


def _alerts(http: httpx.Client, staff_key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rule in sorted({r for rules in CATCHES.values() for r in rules} | {"linked-cluster"}):
        got = _admin(http, staff_key, f"/admin/v1/alerts?limit=500&rule={rule}")["alerts"]
        if len(got) >= 500:
            raise RuntimeError(f"more than 500 {rule} alerts: the endpoint pages no further; use a fresh server")
        out += got
    return out


def score(alerts: list[dict[str, Any]], actors: list[Actor]) -> dict[str, dict[str, int]]:
    """Precision and recall (per-mille) per live typology, over this replay's accounts only: an account
    counts as flagged for a typology when an alert of a rule meant for it (`synth.CATCHES`) names it
    (as its account, or in its explanation: a wash trade's other side, a pump group's other members)."""
    ours = {a.account_id: a for a in actors}
    out: dict[str, dict[str, int]] = {}
    for typ in LIVE_TYPOLOGIES:
        rules = set(CATCHES[typ])
        flagged = {acc for al in alerts if al["rule"] in rules for acc in ours
                   if acc == al["account_id"] or re.search(rf"(?<![\w-]){re.escape(acc)}(?![\w-])", al["explanation"])}
        actual = {acc for acc, a in ours.items() if a.typology == typ}
        tp = len(flagged & actual)
        out[typ] = {"accounts": len(actual), "flagged": len(flagged), "true_positives": tp,
                    "precision_permille": tp * 1000 // len(flagged) if flagged else 0,
                    "recall_permille": tp * 1000 // len(actual) if actual else 0}
    return out
