"""The static verifier page (/por/verify) in a real Chromium: it agrees with the CLI verifier.

Drives Debian's chromium through Playwright (never `playwright install`), loading the page from a
tiny local http.server (a secure context, so WebCrypto is available) exactly as a user would: paste
the proof and root, press Verify, read the verdict line.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ringfence.solvency.pol import build_liability_tree, verify_proof
from ringfence.solvency.vectors import TAMPERINGS, tamper

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "src" / "ringfence" / "web" / "static"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: run `make setup` (apt-get install -y chromium)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page()
            requests: list[str] = []
            pg.on("request", lambda r: requests.append(r.url))
            pg.goto(f"http://127.0.0.1:{server.server_port}/por-verify.html")
            pg.requests = requests  # type: ignore[attr-defined]
            yield pg
            browser.close()
    finally:
        server.shutdown()


def browser_verdict(page, proof_text: str, root_text: str = "") -> str:
    page.fill("#proof-text", proof_text)
    page.fill("#root-text", root_text)
    page.evaluate("document.getElementById('verdict').dataset.done = ''")
    page.click("#verify")
    page.wait_for_selector("#verdict[data-done='1']")
    return page.inner_text("#verdict")


def python_verdict(proof_text: str, root_text: str = "") -> str:
    ok, reason = verify_proof(proof_text, root_text or None)
    return "por: VALID" if ok else f"por: INVALID: {reason}"


def test_page_agrees_on_published_vectors(page) -> None:
    vectors = json.loads((ROOT / "docs" / "por-vectors.json").read_text(encoding="utf-8"))
    for tree in vectors["trees"]:
        root_text = json.dumps(tree["root_file"])
        for proof in tree["proofs"]:
            assert browser_verdict(page, json.dumps(proof), root_text) == "por: VALID"
            assert browser_verdict(page, json.dumps(proof)) == "por: VALID"
    for case in vectors["invalid"]:
        text = json.dumps(case["proof"])
        expect = python_verdict(text)
        assert expect.startswith("por: INVALID: ")
        assert browser_verdict(page, text) == expect, case["tampering"]
    output = page.inner_text("#output")
    assert "Never share your nonce" in output
    assert all(url.startswith("http://127.0.0.1:") for url in page.requests)  # nothing fetched elsewhere


def test_page_agrees_with_cli_on_a_large_tree(page, tmp_path: Path) -> None:
    seed = 1000
    print(f"seed {seed}")
    snap = hashlib.sha256(b"browser").digest()
    accounts = [(f"user-{i}", [i * 7919 % 1000, (i * 104729) % 10**20, 0]) for i in range(1000)]
    accounts.append(("zoë \"quoted\" 用户", [2**127, 1, 2]))
    tree = build_liability_tree(snap, ["BTC", "ETH", "USDT"], accounts, b"k" * 32)
    root_text = json.dumps(tree.root_document())
    proof = tree.proof_for("zoë \"quoted\" 用户")
    cases = {"valid": proof}
    cases.update({name: tamper(proof, name) for name in TAMPERINGS})
    (tmp_path / "root.json").write_text(root_text)
    for name, doc in cases.items():
        text = json.dumps(doc, ensure_ascii=False)
        expect = python_verdict(text, root_text)
        assert browser_verdict(page, text, root_text) == expect, name
        if name in ("valid", "balance", "sibling_sum", "leaf_index_bit", "fraction"):
            (tmp_path / "p.json").write_text(text, encoding="utf-8")
            cli = subprocess.run([sys.executable, "-m", "ringfence.cli", "por", "verify", str(tmp_path / "p.json"),
                                  "--root", str(tmp_path / "root.json")], capture_output=True, text=True)
            assert cli.stdout.strip().splitlines()[-1] == expect, name
            assert cli.returncode == (0 if name == "valid" else 1)
    # A proof against another snapshot's root file.
    other = dict(tree.root_document(), snapshot_id="00" * 32)
    text = json.dumps(proof, ensure_ascii=False)
    assert browser_verdict(page, text, json.dumps(other)) == python_verdict(text, json.dumps(other))


@pytest.mark.parametrize("text", ["", "{", "[]", '{"a": NaN}', '{"version": 1.5}', "null",
                                  '{"a": 1, "a": 2}', "[" * 2000 + "]" * 2000])
def test_page_rejects_garbage_like_the_cli(page, text: str) -> None:
    verdict = browser_verdict(page, text)
    assert verdict.startswith("por: INVALID: ")
    assert python_verdict(text).startswith("por: INVALID: ")
