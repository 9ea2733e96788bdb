"""A real JSON-RPC-over-HTTP endpoint in front of the in-process eth-tester chain (tests only).

There is no Ethereum node on this machine, so to exercise `EthereumAdapter` through web3's
`HTTPProvider` (the path a production node uses) this serves standard JSON-RPC on 127.0.0.1: each
request goes to the eth-tester chain via web3's request manager, and the result is written back in
wire format (integers as 0x quantities, bytes as 0x data). Bound to loopback, stopped by the test.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from hexbytes import HexBytes
from web3 import Web3

MAX_BODY_BYTES = 1 << 20


def _wire(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray, HexBytes)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


class EthRpcBridge:
    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self._lock = threading.Lock()
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                if size > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                request = json.loads(self.rfile.read(size))
                response = [bridge._handle(r) for r in request] if isinstance(request, list) else bridge._handle(request)
                body = json.dumps(response).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handle(self, request: dict) -> dict:
        out = {"jsonrpc": "2.0", "id": request.get("id")}
        try:
            with self._lock:
                result = self.w3.manager.request_blocking(request["method"], request.get("params", []))
            out["result"] = _wire(result)
        except Exception as exc:  # becomes a JSON-RPC error, as a node would answer
            out["error"] = {"code": -32000, "message": str(exc)}
        return out

    def __enter__(self) -> "EthRpcBridge":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
