"""A minimal ERC-20 token (USDT-like, 6 decimals), assembled here from readable EVM opcodes.

No Solidity compiler is available offline, and an opaque hex blob cannot be reviewed, so the token's
bytecode is built at import time by the tiny two-pass assembler below from the listing in this file.
It exists so the Ethereum adapter can be tested against real token deposits on the dev chain.

Behaviour (checked by tests through web3 and the standard ERC-20 ABI):
* constructor mints `INITIAL_SUPPLY_MINOR` to the deployer and logs Transfer(0 -> deployer);
* `balanceOf(address)`, `totalSupply()`, `decimals()` (= 6);
* `transfer(address,uint256)` moves value, logs `Transfer(from, to, value)`, returns true; reverts
  (no state change, no log) when the sender's balance is short or ETH is attached.
Not implemented: `approve` / `transferFrom` / `allowance`, calldata length checks. Storage layout:
balance of `a` at slot `uint160(a)`, total supply at slot 2**255 (cannot collide with an address).
"""

from __future__ import annotations

from eth_utils import keccak

__all__ = [
    "TRANSFER_TOPIC",
    "ERC20_ABI",
    "INITIAL_SUPPLY_MINOR",
    "TOKEN_DECIMALS",
    "assemble",
    "token_init_code",
    "token_runtime_code",
]

TOKEN_DECIMALS = 6
INITIAL_SUPPLY_MINOR = 10**9 * 10**TOKEN_DECIMALS  # one billion tokens
TRANSFER_TOPIC = keccak(text="Transfer(address,address,uint256)")

_OPS = {
    "STOP": 0x00, "ADD": 0x01, "SUB": 0x03, "LT": 0x10, "EQ": 0x14, "SHL": 0x1B, "SHR": 0x1C,
    "CALLER": 0x33, "CALLVALUE": 0x34, "CALLDATALOAD": 0x35, "CODECOPY": 0x39, "SLOAD": 0x54,
    "SSTORE": 0x55, "MSTORE": 0x52, "JUMPI": 0x57, "JUMPDEST": 0x5B, "DUP1": 0x80, "DUP2": 0x81,
    "DUP3": 0x82, "SWAP1": 0x90, "LOG3": 0xA3, "RETURN": 0xF3, "REVERT": 0xFD,
}


def _selector(signature: str) -> int:
    return int.from_bytes(keccak(text=signature)[:4], "big")


def assemble(listing: list) -> bytes:
    """Items: opcode name; ("push", value[, width]); ("label", name); ("ref", name) = PUSH2 label."""
    labels: dict[str, int] = {}
    for pass_no in (1, 2):
        out = bytearray()
        for item in listing:
            if isinstance(item, str):
                out.append(_OPS[item])
            elif item[0] == "label":
                labels[item[1]] = len(out)
                out.append(_OPS["JUMPDEST"])
            elif item[0] == "ref":
                out.append(0x61)
                out += labels.get(item[1], 0).to_bytes(2, "big") if pass_no == 2 else b"\0\0"
            elif item[0] == "push":
                value = item[1]
                width = item[2] if len(item) > 2 else max(1, (value.bit_length() + 7) // 8)
                assert 1 <= width <= 32
                out.append(0x5F + width)
                out += value.to_bytes(width, "big")
            else:
                raise ValueError(f"unknown assembler item {item!r}")
    return bytes(out)


_SUPPLY_SLOT = [("push", 1), ("push", 255), "SHL"]
_ADDR_MASK = [("push", 96), "SHL", ("push", 96), "SHR"]  # keep the low 160 bits
_RETURN_TOP = [("push", 0), "MSTORE", ("push", 32), ("push", 0), "RETURN"]

_RUNTIME = [
    "CALLVALUE", ("ref", "revert"), "JUMPI",  # non-payable
    ("push", 0), "CALLDATALOAD", ("push", 0xE0), "SHR",  # selector
    "DUP1", ("push", _selector("balanceOf(address)"), 4), "EQ", ("ref", "balanceOf"), "JUMPI",
    "DUP1", ("push", _selector("transfer(address,uint256)"), 4), "EQ", ("ref", "transfer"), "JUMPI",
    "DUP1", ("push", _selector("totalSupply()"), 4), "EQ", ("ref", "totalSupply"), "JUMPI",
    "DUP1", ("push", _selector("decimals()"), 4), "EQ", ("ref", "decimals"), "JUMPI",
    ("label", "revert"), ("push", 0), ("push", 0), "REVERT",

    ("label", "balanceOf"), ("push", 4), "CALLDATALOAD", *_ADDR_MASK, "SLOAD", *_RETURN_TOP,
    ("label", "totalSupply"), *_SUPPLY_SLOT, "SLOAD", *_RETURN_TOP,
    ("label", "decimals"), ("push", TOKEN_DECIMALS), *_RETURN_TOP,

    # transfer(to, amount)                                  stack (bottom -> top)
    ("label", "transfer"),
    ("push", 4), "CALLDATALOAD", *_ADDR_MASK,               # to
    ("push", 36), "CALLDATALOAD",                           # to amount
    "CALLER", "SLOAD",                                      # to amount bal
    "DUP2", "DUP2", "LT", ("ref", "revert"), "JUMPI",       # bal < amount -> revert
    "DUP2", "SWAP1", "SUB",                                 # to amount bal-amount
    "CALLER", "SSTORE",                                     # to amount
    "DUP2", "SLOAD", "DUP2", "ADD",                         # to amount tobal+amount
    "DUP3", "SSTORE",                                       # to amount
    ("push", 0), "MSTORE",                                  # to          (mem[0] = amount)
    "CALLER", ("push", int.from_bytes(TRANSFER_TOPIC, "big"), 32),
    ("push", 32), ("push", 0), "LOG3",                      # Transfer(caller, to, amount)
    ("push", 1), *_RETURN_TOP,
]


def token_runtime_code() -> bytes:
    return assemble(_RUNTIME)


def token_init_code() -> bytes:
    runtime = token_runtime_code()
    ctor = [
        ("push", INITIAL_SUPPLY_MINOR, 32), "DUP1", "CALLER", "SSTORE",  # balance[deployer] = supply
        *_SUPPLY_SLOT, "SSTORE",                                           # totalSupply = supply
        ("push", INITIAL_SUPPLY_MINOR, 32), ("push", 0), "MSTORE",
        "CALLER", ("push", 0), ("push", int.from_bytes(TRANSFER_TOPIC, "big"), 32),
        ("push", 32), ("push", 0), "LOG3",                                 # Transfer(0, deployer, supply)
        ("push", len(runtime), 2), "DUP1", ("push", 0, 2), ("push", 0), "CODECOPY",
        ("push", 0), "RETURN",
    ]
    head = assemble(ctor)
    # the runtime starts right after the constructor: patch the CODECOPY source offset
    offset_at = head.index(bytes([0x61, 0, 0, 0x60, 0, 0x39]))
    head = head[: offset_at + 1] + len(head).to_bytes(2, "big") + head[offset_at + 3 :]
    return head + runtime


ERC20_ABI = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "owner", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "totalSupply", "stateMutability": "view",
     "inputs": [], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "decimals", "stateMutability": "view",
     "inputs": [], "outputs": [{"name": "", "type": "uint8"}]},
    {"type": "function", "name": "transfer", "stateMutability": "nonpayable",
     "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
    {"type": "event", "name": "Transfer", "anonymous": False,
     "inputs": [{"name": "from", "type": "address", "indexed": True},
                {"name": "to", "type": "address", "indexed": True},
                {"name": "value", "type": "uint256", "indexed": False}]},
]
