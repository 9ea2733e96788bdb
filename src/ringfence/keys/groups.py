"""Prime-order groups for FROST: secp256k1 and edwards25519, over plain Python ints.

REFERENCE IMPLEMENTATION — NOT CONSTANT-TIME. Python big-int arithmetic leaks timing; this module
exists so that FROST can be tested end to end against RFC 9591. Replace it (with the whole `frost`
module) by an audited library before guarding real funds; the interface in `interface.py` is the seam.

Elements are immutable values: secp256k1 points are `(x, y)` affine tuples, edwards25519 points are
`(x, y)` affine tuples too; the identity is `None` for secp256k1 and `(0, 1)` for edwards25519.
secp256k1 scalar multiplication is delegated to libsecp256k1 through coincurve (fast, and C);
addition and (de)serialisation are done here so that the identity can be represented.

Invariants: every deserialised element is on the curve, not the identity, and (edwards25519) in
the prime-order subgroup; every deserialised scalar is < the group order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coincurve

__all__ = ["Group", "SECP256K1", "ED25519", "DeserializeError"]


class DeserializeError(ValueError):
    """Bytes that do not encode a valid element or scalar of the group."""


@dataclass(frozen=True)
class Group:
    """One prime-order group: the operations RFC 9591 section 3.1 names."""

    name: str
    order: int
    element_size_bytes: int
    scalar_size_bytes: int
    _impl: Any

    def identity(self) -> Any:
        return self._impl.identity()

    def generator(self) -> Any:
        return self._impl.generator()

    def add(self, a: Any, b: Any) -> Any:
        return self._impl.add(a, b)

    def neg(self, a: Any) -> Any:
        return self._impl.neg(a)

    def sub(self, a: Any, b: Any) -> Any:
        return self._impl.add(a, self._impl.neg(b))

    def mul(self, a: Any, k: int) -> Any:
        return self._impl.mul(a, k % self.order)

    def base_mul(self, k: int) -> Any:
        return self._impl.base_mul(k % self.order)

    def eq(self, a: Any, b: Any) -> bool:
        return bool(self._impl.eq(a, b))

    def is_identity(self, a: Any) -> bool:
        return bool(self._impl.eq(a, self._impl.identity()))

    def serialize_element(self, a: Any) -> bytes:
        if self.is_identity(a):
            raise DeserializeError("the identity element cannot be serialised")
        return bytes(self._impl.serialize(a))

    def deserialize_element(self, buf: bytes) -> Any:
        if len(buf) != self.element_size_bytes:
            raise DeserializeError(f"element must be {self.element_size_bytes} bytes, got {len(buf)}")
        a = self._impl.deserialize(buf)
        if self.is_identity(a):
            raise DeserializeError("element is the identity")
        return a

    def serialize_scalar(self, k: int) -> bytes:
        return bytes(self._impl.serialize_scalar(k % self.order))

    def deserialize_scalar(self, buf: bytes) -> int:
        if len(buf) != self.scalar_size_bytes:
            raise DeserializeError(f"scalar must be {self.scalar_size_bytes} bytes, got {len(buf)}")
        k = int(self._impl.deserialize_scalar_int(buf))
        if k >= self.order:
            raise DeserializeError("scalar is not reduced modulo the group order")
        return k


# --------------------------------------------------------------------------------------- secp256k1


class _Secp256k1:
    P = 2**256 - 2**32 - 977
    N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    GX = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
    GY = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8

    def identity(self) -> None:
        return None

    def generator(self) -> tuple[int, int]:
        return (self.GX, self.GY)

    def eq(self, a: Any, b: Any) -> bool:
        return a == b

    def neg(self, a: Any) -> Any:
        if a is None:
            return None
        return (a[0], (-a[1]) % self.P)

    def add(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        p = self.P
        x1, y1 = a
        x2, y2 = b
        if x1 == x2:
            if (y1 + y2) % p == 0:
                return None
            lam = (3 * x1 * x1) * pow(2 * y1, -1, p) % p
        else:
            lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
        x3 = (lam * lam - x1 - x2) % p
        return (x3, (lam * (x1 - x3) - y1) % p)

    @staticmethod
    def _from_pub(pub: coincurve.PublicKey) -> tuple[int, int]:
        raw = pub.format(compressed=False)
        return (int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:65], "big"))

    def _to_pub(self, a: tuple[int, int]) -> coincurve.PublicKey:
        return coincurve.PublicKey(b"\x04" + a[0].to_bytes(32, "big") + a[1].to_bytes(32, "big"))

    def mul(self, a: Any, k: int) -> Any:
        if a is None or k == 0:
            return None
        return self._from_pub(self._to_pub(a).multiply(k.to_bytes(32, "big")))

    def base_mul(self, k: int) -> Any:
        if k == 0:
            return None
        return self._from_pub(coincurve.PublicKey.from_valid_secret(k.to_bytes(32, "big")))

    def serialize(self, a: tuple[int, int]) -> bytes:
        return bytes([2 + (a[1] & 1)]) + a[0].to_bytes(32, "big")

    def deserialize(self, buf: bytes) -> Any:
        if buf[0] not in (2, 3):
            raise DeserializeError("secp256k1 element must be a compressed SEC1 point (02/03 prefix)")
        x = int.from_bytes(buf[1:], "big")
        p = self.P
        if x >= p:
            raise DeserializeError("x coordinate is not a field element")
        y2 = (pow(x, 3, p) + 7) % p
        y = pow(y2, (p + 1) // 4, p)
        if y * y % p != y2:
            raise DeserializeError("point is not on secp256k1")
        if (y & 1) != (buf[0] & 1):
            y = p - y
        return (x, y)

    def serialize_scalar(self, k: int) -> bytes:
        return k.to_bytes(32, "big")

    def deserialize_scalar_int(self, buf: bytes) -> int:
        return int.from_bytes(buf, "big")


# ------------------------------------------------------------------------------------ edwards25519


class _Ed25519:
    P = 2**255 - 19
    L = 2**252 + 27742317777372353535851937790883648493
    D = (-121665 * pow(121666, -1, 2**255 - 19)) % (2**255 - 19)
    SQRT_M1 = pow(2, (2**255 - 19 - 1) // 4, 2**255 - 19)
    GY = 4 * pow(5, -1, 2**255 - 19) % (2**255 - 19)

    def __init__(self) -> None:
        self._g = (self._recover_x(self.GY, 0), self.GY)

    def _recover_x(self, y: int, sign: int) -> int:
        p = self.P
        if y >= p:
            raise DeserializeError("y coordinate is not a field element")
        x2 = (y * y - 1) * pow(self.D * y * y + 1, -1, p) % p
        if x2 == 0:
            if sign:
                raise DeserializeError("invalid edwards25519 encoding (x=0 with sign bit)")
            return 0
        x = pow(x2, (p + 3) // 8, p)
        if (x * x - x2) % p != 0:
            x = x * self.SQRT_M1 % p
        if (x * x - x2) % p != 0:
            raise DeserializeError("point is not on edwards25519")
        if (x & 1) != sign:
            x = p - x
        return x

    def identity(self) -> tuple[int, int]:
        return (0, 1)

    def generator(self) -> tuple[int, int]:
        return self._g

    def eq(self, a: Any, b: Any) -> bool:
        return a == b

    def neg(self, a: tuple[int, int]) -> tuple[int, int]:
        return ((-a[0]) % self.P, a[1])

    # Extended coordinates (X, Y, Z, T) internally; affine at the boundary.
    def _ext(self, a: tuple[int, int]) -> tuple[int, int, int, int]:
        return (a[0], a[1], 1, a[0] * a[1] % self.P)

    def _aff(self, e: tuple[int, int, int, int]) -> tuple[int, int]:
        zi = pow(e[2], -1, self.P)
        return (e[0] * zi % self.P, e[1] * zi % self.P)

    def _eadd(self, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        p = self.P
        x1, y1, z1, t1 = a
        x2, y2, z2, t2 = b
        aa = (y1 - x1) * (y2 - x2) % p
        bb = (y1 + x1) * (y2 + x2) % p
        cc = t1 * 2 * self.D * t2 % p
        dd = z1 * 2 * z2 % p
        e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
        return (e * f % p, g * h % p, f * g % p, e * h % p)

    def _edouble(self, a: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        p = self.P
        x1, y1, z1, _ = a
        aa = x1 * x1 % p
        bb = y1 * y1 % p
        cc = 2 * z1 * z1 % p
        h = aa + bb
        e = h - (x1 + y1) * (x1 + y1)
        g = aa - bb
        f = cc + g
        return (e * f % p, g * h % p, f * g % p, e * h % p)

    def add(self, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        return self._aff(self._eadd(self._ext(a), self._ext(b)))

    def mul(self, a: tuple[int, int], k: int) -> tuple[int, int]:
        acc = (0, 1, 1, 0)
        base = self._ext(a)
        for bit in bin(k)[2:]:
            acc = self._edouble(acc)
            if bit == "1":
                acc = self._eadd(acc, base)
        return self._aff(acc)

    def base_mul(self, k: int) -> tuple[int, int]:
        return self.mul(self._g, k)

    def serialize(self, a: tuple[int, int]) -> bytes:
        return (a[1] | ((a[0] & 1) << 255)).to_bytes(32, "little")

    def deserialize(self, buf: bytes) -> tuple[int, int]:
        v = int.from_bytes(buf, "little")
        y = v & ((1 << 255) - 1)
        a = (self._recover_x(y, v >> 255), y)
        # RFC 9591 6.1: reject elements outside the prime-order subgroup.
        if self.mul(a, self.L) != (0, 1):
            raise DeserializeError("edwards25519 element is not in the prime-order subgroup")
        return a

    def serialize_scalar(self, k: int) -> bytes:
        return k.to_bytes(32, "little")

    def deserialize_scalar_int(self, buf: bytes) -> int:
        return int.from_bytes(buf, "little")


SECP256K1 = Group("secp256k1", _Secp256k1.N, 33, 32, _Secp256k1())
ED25519 = Group("edwards25519", _Ed25519.L, 32, 32, _Ed25519())
