"""The country of a client IP, when a GeoIP database is configured (`RINGFENCE_MONITORING_GEOIP`).

`GeoIP(path)` reads a MaxMind DB file (GeoLite2-Country, GeoIP2-Country or City: any MMDB whose
records carry `country.iso_code` or `registered_country.iso_code`) with the `maxminddb` reader; the
worker adds `data.country` to each event with an IP and no country before scoring it, so the
behavioural model's `country` feature and rules matching on `country` see it. Nothing is downloaded:
the operator supplies the file. No database configured: no country, as before.

`write_country_db(path, {"185.1.2.0/24": "RU", ...})` writes a small MMDB (IPv4, 24-bit records,
format 2.0) for tests and demos: the MaxMind format is a binary search tree over the address bits,
16 zero bytes, a data section, and a metadata map after the `\\xab\\xcd\\xefMaxMind.com` marker.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
import time
from pathlib import Path
from typing import Any

__all__ = ["GeoIP", "write_country_db"]


class GeoIP:
    def __init__(self, path: str | Path) -> None:
        import maxminddb

        self.path = str(path)
        try:
            self._reader = maxminddb.open_database(self.path)
        except maxminddb.InvalidDatabaseError as err:
            raise ValueError(f"not a MaxMind DB file: {err}") from None
        self.country = functools.lru_cache(maxsize=65_536)(self._country)

    def _country(self, ip: str) -> str:
        """The ISO 3166 code of `ip`'s country, '' when unknown (or not an address)."""
        try:
            record = self._reader.get(ip)
        except ValueError:  # not an address, or IPv6 in an IPv4-only database
            return ""
        if not isinstance(record, dict):
            return ""
        for key in ("country", "registered_country"):
            part = record.get(key)
            if isinstance(part, dict) and isinstance(part.get("iso_code"), str):
                return str(part["iso_code"])
        return ""

    def close(self) -> None:
        self._reader.close()


# ------------------------------------------------------------------------------ a small MMDB writer


def _ctrl(kind: int, size: int) -> bytes:
    extended = kind > 7
    head = 0 if extended else kind << 5
    if size < 29:
        out = bytes([head | size])
    elif size < 29 + 256:
        out = bytes([head | 29, size - 29])
    else:
        out = bytes([head | 30]) + (size - 285).to_bytes(2, "big")
    if extended:
        out = out[:1] + bytes([kind - 7]) + out[1:]
    return out


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _ctrl(2, len(raw)) + raw
    if isinstance(value, bool):
        return _ctrl(14, int(value))
    if isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
        return _ctrl(6 if value < 2**32 else 9, len(raw)) + raw  # uint32, uint64
    if isinstance(value, dict):
        return _ctrl(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _ctrl(11, len(value)) + b"".join(_encode(v) for v in value)
    if isinstance(value, tuple):  # ("uint16" | "uint32" | "uint64", n): the metadata's typed integers
        kind, n = value
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
        return _ctrl({"uint16": 5, "uint32": 6, "uint64": 9}[kind], len(raw)) + raw
    raise TypeError(f"cannot encode {type(value).__name__}")


def write_country_db(path: str | Path, networks: dict[str, str]) -> Path:
    """Write an IPv4 MMDB mapping each network (CIDR) to `{"country": {"iso_code": CODE}}`."""
    data = b""
    offsets: dict[str, int] = {}
    for code in sorted(set(networks.values())):
        offsets[code] = len(data)
        data += _encode({"country": {"iso_code": code}})
    # the tree: node -> [left, right], each ("node", i) | ("data", offset) | None (no data)
    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    for cidr, code in sorted(networks.items(), key=lambda kv: ipaddress.ip_network(kv[0]).prefixlen):
        net = ipaddress.ip_network(cidr)
        if net.version != 4 or net.prefixlen == 0:
            raise ValueError(f"{cidr}: an IPv4 network with a prefix is needed")
        bits = int(net.network_address)
        node = 0
        for depth in range(net.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                nodes[node][bit] = ("data", offsets[code])
                break
            nxt = nodes[node][bit]
            if nxt is None or nxt[0] == "data":  # split a shorter network's leaf to hold a longer one
                nodes.append([nxt, nxt])
                nodes[node][bit] = ("node", len(nodes) - 1)
                nxt = nodes[node][bit]
            assert nxt is not None
            node = nxt[1]
    count = len(nodes)

    def record(r: tuple[str, int] | None) -> int:
        if r is None:
            return count
        return r[1] if r[0] == "node" else count + 16 + r[1]

    tree = b"".join(struct.pack(">I", record(left))[1:] + struct.pack(">I", record(right))[1:] for left, right in nodes)
    meta = {"node_count": ("uint32", count), "record_size": ("uint16", 24), "ip_version": ("uint16", 4),
            "database_type": "ringfence-test-country", "languages": ["en"], "binary_format_major_version": ("uint16", 2),
            "binary_format_minor_version": ("uint16", 0), "build_epoch": ("uint64", int(time.time())),
            "description": {"en": "ringfence test country database"}}
    out = Path(path)
    out.write_bytes(tree + b"\x00" * 16 + data + b"\xab\xcd\xefMaxMind.com" + _encode(meta))
    return out
