"""bench/replicate.py over TLS, as prod mode connects: against a private nats-server of its own.

Usage: python bench/replicate_tls.py [--port 4333] [--dir DIR] [replicate.py's options: --smoke --modes ... --note ...]

It makes (in a new folder, DIR or a temporary one) the set-up docs/resilience.md describes, runs the
bench on it, stops the server and deletes the folder:

    ringfence replication nats-config --stream RFBENCH --peers DIR/peers.json --out DIR/nats --port 4333 --store-dir DIR/nats/js
    nats-server -c DIR/nats/nats-server.conf
    RINGFENCE_NATS_PASSWORD=$(cat DIR/nats/rf-node.password) \\
        python bench/replicate.py --nats "tls://rf-node@127.0.0.1:4333/RFBENCH?tls_ca=DIR/nats/ca.pem" [--smoke]

The nodes' user `rf-node` may use the one stream `--stream` names (every mode runs on it) and may not
delete a stream; the bench deletes the stream (and its bucket) between modes, so the config gets
`$JS.API.STREAM.DELETE.RFBENCH` and `...DELETE.KV_RFBENCH-leader` for rf-node, nothing else changed
(the publish path's permissions, TLS and pinned CA are prod's). The result line says
`"transport": "tls"`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STREAM = "RFBENCH"


def _ringfence() -> list[str]:
    """The `ringfence` command of this interpreter's environment (the sources on PYTHONPATH)."""
    script = Path(sys.executable).with_name("ringfence")
    return [str(script)] if script.exists() else ["ringfence"]


def _wait_port(port: int, server: subprocess.Popen, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"nats-server exited ({server.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nats-server did not listen on 127.0.0.1:{port} within {seconds:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4333, help="the private nats-server's port (default 4333)")
    parser.add_argument("--dir", type=Path, default=None, help="a new folder for the server (default: a temporary one); "
                        "deleted afterwards")
    args, rest = parser.parse_known_args()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    root = args.dir or Path(tempfile.mkdtemp(prefix="rf-bench-tls-"))
    root.mkdir(mode=0o700, exist_ok=args.dir is None)
    server = None
    try:
        out = root / "nats"
        peers = root / "peers.json"
        public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        peers.write_text(json.dumps({"bench": public}))
        subprocess.run([*_ringfence(), "replication", "nats-config", "--stream", STREAM, "--peers", str(peers),
                        "--out", str(out), "--port", str(args.port), "--store-dir", str(out / "js")], check=True,
                       stdout=subprocess.DEVNULL)
        config_path = out / "nats-server.conf"
        config = json.loads(config_path.read_text())
        for user in config["authorization"]["users"]:
            if user["user"] == "rf-node":  # the bench deletes its stream between modes (see the module)
                user["permissions"]["publish"]["allow"] += [f"$JS.API.STREAM.DELETE.{STREAM}",
                                                            f"$JS.API.STREAM.DELETE.KV_{STREAM}-leader"]
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        server = subprocess.Popen(["nats-server", "-c", str(config_path)], stdout=subprocess.DEVNULL,
                                  stderr=(root / "nats-server.log").open("w"))
        _wait_port(args.port, server)
        env = {**os.environ, "RINGFENCE_NATS_PASSWORD": (out / "rf-node.password").read_text().strip()}
        url = f"tls://rf-node@127.0.0.1:{args.port}/{STREAM}?tls_ca={out / 'ca.pem'}"
        bench = Path(__file__).with_name("replicate.py")
        return subprocess.run([sys.executable, str(bench), "--nats", url, *rest], env=env).returncode
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
