"""`ringfence asset add|list` against a real prod-mode `ringfence serve` with no demo: a new operator's first
assets and first market.

The staff genesis is made the documented way (`ringfence staff init` on the stopped data folder), then the
node runs with RINGFENCE_MODE=prod and nothing registered. Every refusal (a bad code, decimals out of range,
an unknown class, a long chain, a code already there, one operator, a non-operator, a key the node does not
know) leaves the node's assets and change counter as they were; the quorum registers ETH and USDT, which
`asset list` shows, and `market add ETHUSDT` then lists a market that exchangeInfo shows. A replay of the
journal, from genesis and from the snapshot, gives the same state hash.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from typing import Any

import httpx
import pytest

from ringfence.staff.console import AdminClient, load_key
from ringfence.staff.decisions import StaffKey, format_approval, write_key_file
from tests.api.conftest import NO_CHAINS, Invoked, Server, invoke

PROD = {
    "RINGFENCE_MODE": "prod",
    "RINGFENCE_IDENTITY_SECRET_KEY_HEX": secrets.token_hex(32),
    "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example",
    # prod mode probes SMTP at start (tests/api/test_serve_mail.py); nothing here sends mail
    "RINGFENCE_IDENTITY_MAIL_POLL_MS": "0",
    "RINGFENCE_IDENTITY_SMTP_HOST": "mail.exchange.example",
    **NO_CHAINS,
}


def process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("asset")
    keys = root / "keys"
    out = process("staff", "init", "--data", str(root / "data"), "--member", "ada:operator", "--member", "ben:operator",
                  "--member", "cy:analyst", "--out-dir", str(keys))
    assert out.returncode == 0, out.stdout + out.stderr
    stranger = StaffKey.generate("zed")  # a well-formed key of nobody the node registered
    write_key_file(root / "zed.key", stranger)
    srv = Server(root / "data", env=PROD, demo=False, chains=False)
    yield srv, keys
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def asset(*args: str) -> Invoked:
    return invoke("asset", *args)


def assets(srv: Server, keys: Any) -> dict[str, Any]:
    out = asset("list", "--json", "--key", str(keys / "cy.key"), "--url", srv.base)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


ETH = ("add", "ETH", "--decimals", "18", "--class", "crypto", "--chain", "ethereum", "--reason", "listing committee 1")


def test_first_assets_and_market_on_a_prod_node(node) -> None:
    srv, keys = node
    url = ("--url", srv.base)
    ada, ben, cy = (str(keys / f"{s}.key") for s in ("ada", "ben", "cy"))
    before = assets(srv, keys)
    assert before["assets"] == [] and before["version"] == 0, before  # prod, no demo, no chains: nothing registered

    # bad fields: exit 2 naming the option, before anyone signs or anything is sent
    def with_(option: str, value: str) -> list[str]:
        args = list(ETH)
        args[args.index(option) + 1] = value
        return args

    for args, named in ((["add", "eth", *ETH[2:]], "CODE"), (["add", "1ETH", *ETH[2:]], "CODE"),
                        (["add", "ETHEREUMCLASSIC", *ETH[2:]], "CODE"), (with_("--decimals", "31"), "--decimals"),
                        (with_("--decimals", "-1"), "--decimals"), (with_("--decimals", "1.5"), "--decimals"),
                        (with_("--class", "traditional"), "--class"), (with_("--chain", "x" * 33), "--chain")):
        out = asset(*args, "--key", ada, "--key", ben, *url)
        assert out.returncode == 2 and named in out.stderr, (args, out.stdout, out.stderr)
    assert "did you mean ETH?" in asset("add", "eth", *ETH[2:], "--key", ada, *url).stderr
    # the node refuses what the quorum has not decided (exit 1 with the rule, as every console refusal)
    out = asset(*ETH, "--key", ada, *url)
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr, out.stderr
    token = asset(*ETH, "--key", cy, "--sign-only", *url).stdout.strip()
    out = asset(*ETH, "--key", ada, "--approval", token, *url)
    assert out.returncode == 1 and "rule 'role-required'" in out.stderr, out.stderr
    zed = str(keys.parent / "zed.key")  # a key the node does not know: as the sender, as an approver
    out = asset(*ETH, "--key", zed, "--key", ada, *url)
    assert out.returncode == 1 and "X-RF-Signature" in out.stderr, out.stderr
    out = asset(*ETH, "--key", ada, "--key", zed, *url)
    assert out.returncode == 1 and "approvals[1]" in out.stderr and "zed" in out.stderr, out.stderr
    out = asset(*ETH, "--key", str(keys / "nobody.key"), *url)
    assert out.returncode == 1 and "nobody.key" in out.stderr, out.stderr
    assert assets(srv, keys) == before

    # ben signs on his terminal, ada submits with his token
    token = asset(*ETH, "--key", ben, "--sign-only", *url).stdout.strip()
    assert token.startswith("ben:")
    out = asset(*ETH, "--key", ada, "--approval", token, *url)
    assert out.returncode == 0 and "RegisterAssetSigned" in out.stdout and "AssetRegistered" in out.stdout, out.stderr
    out = asset(*ETH, "--key", ada, "--approval", token, *url)  # the same decision again: the code is there now
    assert out.returncode == 2 and "CODE" in out.stderr and "already registered (18 decimals, crypto, chain ethereum)" in out.stderr
    # past the CLI's own check, the engine refuses the duplicate too (409, field code), even with fresh approvals
    view = assets(srv, keys)
    subject = ["ETH", 18, "crypto", "ethereum", "again", view["version"]]
    tokens = [format_approval(load_key(k).sign("asset.register", subject, 2**62)) for k in (ada, ben)]
    with AdminClient(srv.base, load_key(ada)) as client:
        with pytest.raises(Exception) as err:
            client.post("/assets", {"code": "ETH", "decimals": 18, "asset_class": "crypto", "chain": "ethereum",
                                    "reason": "again", "approvals": tokens})
    assert getattr(err.value, "field", None) == "code" and "already registered" in str(err.value), err.value
    out = asset("add", "USDT", "--decimals", "6", "--class", "crypto", "--reason", "quote asset", "--key", ada, "--key", ben, *url)
    assert out.returncode == 0, out.stderr
    view = assets(srv, keys)
    assert view["version"] == 2
    assert view["assets"] == [
        {"code": "ETH", "decimals": 18, "asset_class": "crypto", "chain": "ethereum", "markets": []},
        {"code": "USDT", "decimals": 6, "asset_class": "crypto", "chain": "", "markets": []}]
    table = asset("list", "--key", ada, *url).stdout
    assert re.search(r"ETH\s*│\s*18\s*│\s*crypto\s*│\s*ethereum", table) and re.search(r"USDT\s*│\s*6\s*│\s*crypto\s*│\s*-", table), table

    # the new user's first market, on the assets just registered
    out = invoke("market", "add", "ETHUSDT", "--base", "ETH", "--quote", "USDT", "--tick-size", "0.01", "--lot-size", "0.0001",
                 "--min-notional", "5", "--reason", "first market", "--key", ada, "--key", ben, *url)
    assert out.returncode == 0 and "ListMarketSigned" in out.stdout, out.stderr
    [info] = httpx.get(srv.base + "/api/v3/exchangeInfo").json()["symbols"]
    assert (info["symbol"], info["baseAsset"], info["baseAssetPrecision"], info["quoteAsset"], info["quotePrecision"]) == (
        "ETHUSDT", "ETH", 18, "USDT", 6), info
    assert [a["markets"] for a in assets(srv, keys)["assets"]] == [["ETHUSDT"], ["ETHUSDT"]]
    # the audit trail names each decision, what it is about, who signed it and why
    with AdminClient(srv.base, load_key(cy)) as client:
        trail = client.get("/audit", "limit=10")["decisions"]
    assert [(d["command"], d["about"], d["signed_by"], d["reason"]) for d in trail[:3]] == [
        ("ListMarketSigned", "ETHUSDT", ["ada", "ben"], "first market"),
        ("RegisterAssetSigned", "USDT", ["ada", "ben"], "quote asset"),
        ("RegisterAssetSigned", "ETH", ["ada", "ben"], "listing committee 1")], trail

    # deterministic: the journal replays, from genesis and from the snapshot, to the same state hash
    assert srv.stop() == 0
    hashes = []
    for flag in ((), ("--from-snapshot",)):
        r = process("journal", "replay", str(srv.data), *flag)
        assert r.returncode == 0 and "DIFFERS" not in r.stdout, r.stdout + r.stderr
        hashes += re.findall(r"state hash\s*│?\s*([0-9a-f]{64})", r.stdout)
    assert len(hashes) == 2 and hashes[0] == hashes[1], hashes
    again = Server(srv.data, env=PROD, demo=False, chains=False)
    srv.proc, srv.base, srv.log = again.proc, again.base, again.log  # the fixture stops it
    assert [a["code"] for a in assets(srv, keys)["assets"]] == ["ETH", "USDT"]
