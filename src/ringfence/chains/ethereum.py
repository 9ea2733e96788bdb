"""`ChainAdapter` for Ethereum over web3, plus an in-process dev chain (eth-tester + py-evm).

The adapter only uses the standard web3 `eth` API (block_number, get_block, get_balance,
get_transaction, get_transaction_receipt, send_raw_transaction, chain_id, max_priority_fee), so the
same code runs against a real node: set `RINGFENCE_ETH_RPC_URL` and `EthereumAdapter.from_settings()`
uses an HTTPProvider; unset, it starts the in-process eth-tester chain. `EthDevChain` adds the
test-only controls (mine, snapshot/revert for reorgs, faucet) and is never used by the adapter.

What is checked before a raw transaction is sent: it decodes, its signature recovers a sender, and
its chain id is this chain's (eth-tester itself does not check chain ids; a real node does, and a
tx signed without EIP-155 replay protection is refused outright). Broadcasting a tx whose hash the
node already knows returns `already_known=True` and sends nothing.

Invariants: amounts are wei (`int`); addresses leave the adapter EIP-55 checksummed; a reverted
transaction (receipt status 0) moves no value, so it is reported only as its sender's gas fee
(OUT, amount 0, `fee_minor` = gas used * effective gas price). For every watched address the
balance change equals sum(IN) - sum(OUT amount + fee) over the scanned blocks (tested).
ERC-20 tokens registered with `add_token` are scanned from their `Transfer` logs and balanced with
`balanceOf` at the requested height. Limitation: ETH moved by contract-internal calls (not the tx's
own `value`) is not seen by `scan` (a real deployment would add trace_* or a deposit contract).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import rlp
from hexbytes import HexBytes
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak, to_checksum_address
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import TransactionNotFound

from ..errors import (
    ChainUnavailable,
    ConfigError,
    InvalidAddress,
    NotFound,
    TransactionRejected,
    UnsupportedAsset,
    ValidationError,
)
from .erc20 import ERC20_ABI, TRANSFER_TOPIC
from .adapter import (
    MAX_SCAN_BLOCKS,
    MAX_WATCHED_ADDRESSES,
    Block,
    BroadcastResult,
    Direction,
    FeeEstimate,
    Reorg,
    ReorgTracker,
    ScanResult,
    Transfer,
    TxState,
    TxStatus,
    finality_depth_for,
)

__all__ = [
    "EthereumAdapter",
    "EthereumSettings",
    "EthDevChain",
    "TokenSpec",
    "validate_eth_address",
    "DEFAULT_ETH_FINALITY",
]

#: Confirmations after which an ETH deposit is credited. Post-merge finality is ~2 epochs (64 blocks);
#: many exchanges credit earlier; ringfence waits for finality by default.
DEFAULT_ETH_FINALITY = {"ETH": 64}
MAX_RAW_TX_BYTES = 128 * 1024
TRANSFER_GAS = 21_000

_HEX40 = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX64 = re.compile(r"0x[0-9a-fA-F]{64}")
_BTC_LIKE = re.compile(r"^(bc1|tb1|bcrt1|[13mn2][1-9A-HJ-NP-Za-km-z]{24,40}$)", re.IGNORECASE)


def validate_eth_address(address: object, field: str = "address") -> str:
    """Return the EIP-55 checksummed address or raise InvalidAddress naming `field`.

    All-lowercase or all-uppercase hex carries no checksum and is accepted (EIP-55); mixed case must
    match the checksum exactly, since a single flipped letter is how a typo shows.
    """
    if not isinstance(address, str) or not address:
        raise InvalidAddress("must be a non-empty string", field=field, rule="type")
    if not _HEX40.fullmatch(address):
        if _BTC_LIKE.match(address):
            raise InvalidAddress(
                "looks like a Bitcoin address, not an Ethereum address", field=field, rule="chain"
            )
        raise InvalidAddress("must be 0x followed by 40 hex characters", field=field, rule="format")
    body = address[2:]
    checksummed = to_checksum_address(address)
    if body != body.lower() and body != body.upper() and address != checksummed:
        raise InvalidAddress("bad checksum (EIP-55 mixed-case)", field=field, rule="checksum")
    return checksummed


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """An ERC-20 token the adapter watches: ledger asset code, contract, decimals."""

    asset: str
    contract: str
    decimals: int


@dataclass(frozen=True, slots=True)
class EthereumSettings:
    """Where the Ethereum node is. `rpc_url=None` means the in-process eth-tester chain."""

    rpc_url: str | None = None
    timeout_ms: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EthereumSettings":
        env = os.environ if env is None else env
        url = env.get("RINGFENCE_ETH_RPC_URL") or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError("must be an http:// or https:// URL", field="RINGFENCE_ETH_RPC_URL")
        return cls(rpc_url=url)


class EthereumAdapter:
    chain = "ethereum"
    native_asset = "ETH"

    def __init__(
        self,
        w3: Web3,
        network: str,
        finality: Mapping[str, int] | None = None,
        max_tracked_blocks: int = 1000,
    ) -> None:
        self.w3 = w3
        self.network = network
        self._finality = dict(finality or DEFAULT_ETH_FINALITY)
        self._tracker = ReorgTracker(max_tracked_blocks)
        self._chain_id: int | None = None
        self._tokens: dict[str, TokenSpec] = {}

    def add_token(self, asset: str, contract: str, decimals: int, finality_depth: int | None = None) -> TokenSpec:
        """Watch an ERC-20 token as ledger asset `asset` (e.g. USDT at its contract address)."""
        if asset == self.native_asset or not asset.isalnum():
            raise ValidationError("must be an asset code other than ETH", field="asset")
        if not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise ValidationError("must be an integer 0..36", field="decimals")
        spec = TokenSpec(asset, validate_eth_address(contract, "contract"), decimals)
        if not self._call(lambda: self.w3.eth.get_code(spec.contract)):
            raise ValidationError(f"no contract is deployed at {spec.contract}", field="contract")
        self._tokens[asset] = spec
        self._finality[asset] = self._finality[self.native_asset] if finality_depth is None else finality_depth
        return spec

    def _token(self, asset: str) -> TokenSpec:
        try:
            return self._tokens[asset]
        except KeyError:
            raise UnsupportedAsset(
                f"asset {asset!r} is not supported on ethereum; supported: {', '.join(self.supported_assets())}",
                field="asset",
            ) from None

    @classmethod
    def from_settings(cls, settings: EthereumSettings | None = None, **kw) -> "EthereumAdapter":
        settings = settings or EthereumSettings.from_env()
        if settings.rpc_url:
            provider = HTTPProvider(settings.rpc_url, request_kwargs={"timeout": settings.timeout_ms / 1000})  # float-ok: seconds for requests
            return cls(Web3(provider), network="rpc", **kw)
        return cls(Web3(EthereumTesterProvider()), network="tester", **kw)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._call(lambda: self.w3.eth.chain_id))
        return self._chain_id

    def _call(self, fn):
        try:
            return fn()
        except (ConnectionError, OSError) as exc:
            raise ChainUnavailable(f"ethereum node unreachable: {type(exc).__name__}") from None

    # ---- chain shape ---------------------------------------------------------------------------

    def current_height(self) -> int:
        return int(self._call(lambda: self.w3.eth.block_number))

    def block_hash(self, height: int) -> str:
        if not isinstance(height, int) or height < 0:
            raise ValidationError("must be a non-negative integer", field="height")
        try:
            block = self._call(lambda: self.w3.eth.get_block(height))
        except Exception as exc:
            if isinstance(exc, ChainUnavailable):
                raise
            raise NotFound(f"no block at height {height}", field="height") from None
        return Web3.to_hex(block["hash"])

    def check_reorg(self) -> Reorg | None:
        return self._tracker.check(self.current_height(), self.block_hash)

    def scan(self, since_height: int, watched: Iterable[str]) -> ScanResult:
        if not isinstance(since_height, int) or since_height < 0:
            raise ValidationError("must be a non-negative integer", field="since_height")
        addrs: set[str] = set()
        for n, a in enumerate(watched):
            if n >= MAX_WATCHED_ADDRESSES:
                raise ValidationError(f"at most {MAX_WATCHED_ADDRESSES} addresses per scan", field="watched")
            addrs.add(validate_eth_address(a, field=f"watched[{n}]"))
        reorg = self.check_reorg()
        start = since_height + 1 if reorg is None else min(since_height + 1, reorg.fork_height)
        tip = self.current_height()
        end = min(tip, start + MAX_SCAN_BLOCKS - 1)
        blocks = []
        for h in range(start, end + 1):
            raw = self._call(lambda h=h: self.w3.eth.get_block(h, full_transactions=True))
            bh = Web3.to_hex(raw["hash"])
            transfers = self._transfers(raw, addrs) + self._token_transfers(h, raw["hash"], addrs)
            blocks.append(Block(h, bh, Web3.to_hex(raw["parentHash"]), tuple(transfers)))
            self._tracker.remember(h, bh)
        scanned_to = end if blocks else min(start - 1, tip)
        return ScanResult(tip_height=tip, scanned_to_height=scanned_to, blocks=tuple(blocks), reorg=reorg)

    def _transfers(self, raw_block, addrs: set[str]) -> list[Transfer]:
        """Native ETH moved by each transaction's own `value`, and the gas a watched sender paid."""
        out: list[Transfer] = []
        for tx in raw_block["transactions"]:
            sender = to_checksum_address(tx["from"])
            to = to_checksum_address(tx["to"]) if tx.get("to") else None
            value = int(tx["value"])
            if sender not in addrs and (to not in addrs or value == 0):
                continue
            txid = Web3.to_hex(tx["hash"])
            receipt = self._call(lambda tx=tx: self.w3.eth.get_transaction_receipt(tx["hash"]))
            ok = receipt["status"] == 1
            moved = value if ok else 0  # a reverted tx moves no value but still burns gas
            if to in addrs and moved:
                out.append(Transfer(txid, 0, "ETH", to, Direction.IN, moved, counterparty=sender))
            if sender in addrs:
                fee = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
                out.append(Transfer(txid, 0, "ETH", sender, Direction.OUT, moved, counterparty=to, fee_minor=fee))
        return out

    def _token_transfers(self, height: int, block_hash, addrs: set[str]) -> list[Transfer]:
        if not self._tokens:
            return []
        by_contract = {t.contract: t for t in self._tokens.values()}
        logs = self._call(
            lambda: self.w3.eth.get_logs(
                {
                    "fromBlock": height,
                    "toBlock": height,
                    "address": list(by_contract),
                    "topics": [Web3.to_hex(TRANSFER_TOPIC)],
                }
            )
        )
        # (eth-tester has no blockHash filter) keep only logs of the block we read: if the block at
        # this height changed between the two calls, the reorg tracker reports it on the next scan
        logs = [log for log in logs if bytes(log["blockHash"]) == bytes(block_hash)]
        out: list[Transfer] = []
        for log in logs:
            if len(log["topics"]) != 3 or log.get("removed"):
                continue  # not an ERC-20 Transfer(address,address,uint256) (e.g. ERC-721 has 4 topics)
            spec = by_contract[to_checksum_address(log["address"])]
            sender = to_checksum_address(bytes(log["topics"][1])[-20:])
            to = to_checksum_address(bytes(log["topics"][2])[-20:])
            value = int.from_bytes(bytes(log["data"]), "big")
            txid = Web3.to_hex(log["transactionHash"])
            index = int(log["logIndex"])
            if value == 0:
                continue
            if to in addrs:
                out.append(Transfer(txid, index, spec.asset, to, Direction.IN, value, counterparty=sender))
            if sender in addrs:
                out.append(Transfer(txid, index, spec.asset, sender, Direction.OUT, value, counterparty=to))
        return out

    # ---- balances and transactions -------------------------------------------------------------

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        addr = validate_eth_address(address)
        ident = "latest" if height is None else height
        if height is not None and (not isinstance(height, int) or not 0 <= height <= self.current_height()):
            raise NotFound(f"no block at height {height}", field="height")
        if asset in (None, self.native_asset):
            return int(self._call(lambda: self.w3.eth.get_balance(addr, block_identifier=ident)))
        spec = self._token(asset)
        token = self.w3.eth.contract(address=spec.contract, abi=ERC20_ABI)
        return int(self._call(lambda: token.functions.balanceOf(addr).call(block_identifier=ident)))

    def tx_status(self, txid: str) -> TxStatus:
        if not isinstance(txid, str) or not _HEX64.fullmatch(txid):
            raise ValidationError("must be 0x followed by 64 hex characters", field="txid")
        txid = txid.lower()
        try:
            tx = self._call(lambda: self.w3.eth.get_transaction(txid))
        except TransactionNotFound:
            return TxStatus(txid, TxState.UNKNOWN)
        if tx.get("blockNumber") is None:
            return TxStatus(txid, TxState.PENDING)
        h = int(tx["blockNumber"])
        tip = self.current_height()
        # a node may briefly return a tx from a replaced block: trust it only if the hash still matches
        if h > tip or self.block_hash(h) != Web3.to_hex(tx["blockHash"]):
            return TxStatus(txid, TxState.UNKNOWN)
        receipt = self._call(lambda: self.w3.eth.get_transaction_receipt(txid))
        return TxStatus(
            txid,
            TxState.CONFIRMED,
            confirmations=tip - h + 1,
            block_height=h,
            block_hash=Web3.to_hex(tx["blockHash"]),
            succeeded=receipt["status"] == 1,
        )

    def confirmations(self, txid: str) -> int:
        return self.tx_status(txid).confirmations

    def broadcast(self, raw_tx: bytes) -> BroadcastResult:
        if not isinstance(raw_tx, (bytes, bytearray)) or not 0 < len(raw_tx) <= MAX_RAW_TX_BYTES:
            raise ValidationError(f"must be 1..{MAX_RAW_TX_BYTES} raw transaction bytes", field="raw_tx")
        raw = bytes(raw_tx)
        chain_id = _decode_chain_id(raw)
        try:
            Account.recover_transaction(raw)
        except Exception as exc:
            raise TransactionRejected(
                f"signature does not recover a sender: {exc}", field="raw_tx", reason="bad_signature"
            ) from None
        if chain_id != self.chain_id:
            raise TransactionRejected(
                f"wrong network: transaction is signed for chain id {chain_id}, this chain is {self.chain_id}",
                field="raw_tx",
                reason="wrong_chain",
            )
        txid = "0x" + keccak(raw).hex()
        if self.tx_status(txid).state is not TxState.UNKNOWN:
            return BroadcastResult(txid, already_known=True)
        try:
            sent = self._call(lambda: self.w3.eth.send_raw_transaction(raw))
        except ChainUnavailable:
            raise
        except Exception as exc:
            msg = str(exc)
            if "already known" in msg.lower() or "known transaction" in msg.lower():
                return BroadcastResult(txid, already_known=True)
            raise TransactionRejected(f"node refused the transaction: {msg}", field="raw_tx", reason="rejected") from None
        assert Web3.to_hex(sent) == txid, "node computed a different tx hash"
        return BroadcastResult(txid, already_known=False)

    def estimate_fee(self, asset: str | None = None) -> FeeEstimate:
        """EIP-1559 quote: max fee per gas = 2 * base fee + tip (survives ~6 full blocks of rises).

        Token transfers pay gas in ETH too, so the quote is the same; the gas *amount* differs."""
        if asset not in (None, self.native_asset):
            self._token(asset)
        base = int(self._call(lambda: self.w3.eth.get_block("latest"))["baseFeePerGas"])
        tip = int(self._call(lambda: self.w3.eth.max_priority_fee))
        return FeeEstimate("ETH", 2 * base + tip, "gas", priority_fee_minor=tip)

    # ---- addresses and assets ------------------------------------------------------------------

    def validate_address(self, address: str, field: str = "address") -> str:
        return validate_eth_address(address, field)

    def finality_depth(self, asset: str) -> int:
        return finality_depth_for(self._finality, asset, self.chain)

    def supported_assets(self) -> Sequence[str]:
        return tuple(self._finality)

    def token(self, asset: str) -> TokenSpec:
        return self._token(asset)


def _decode_chain_id(raw: bytes) -> int:
    """Chain id of a signed raw tx (typed EIP-2718, or legacy with EIP-155); refuses the rest."""
    try:
        if raw[0] >= 0xC0:  # legacy RLP list
            fields = rlp.decode(raw)
            if len(fields) != 9:
                raise ValueError("legacy transaction must have 9 fields")
            v = int.from_bytes(fields[6], "big")
            if v in (27, 28):
                raise TransactionRejected(
                    "transaction has no chain id (pre-EIP-155) and could be replayed on any chain",
                    field="raw_tx",
                    reason="no_chain_id",
                )
            return (v - 35) // 2
        return int(TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["chainId"])
    except TransactionRejected:
        raise
    except Exception as exc:
        raise TransactionRejected(f"transaction does not decode: {exc}", field="raw_tx", reason="malformed") from None


class EthDevChain:
    """Test-only controls for the in-process eth-tester chain behind an `EthereumAdapter`.

    eth-tester's dev accounts are funded at genesis; their keys are the integers 1..10, which is
    public knowledge and fine for a dev chain only. Each reorg branch mines with a different coinbase
    so replaced blocks get different hashes.
    """

    def __init__(self, adapter: EthereumAdapter) -> None:
        provider = adapter.w3.provider
        if not isinstance(provider, EthereumTesterProvider):
            raise ConfigError("EthDevChain needs the in-process eth-tester provider", field="provider")
        self.adapter = adapter
        self.tester = provider.ethereum_tester
        self._branch = 0

    @staticmethod
    def dev_key(n: int = 1) -> bytes:
        if not 1 <= n <= 10:
            raise ValidationError("dev accounts are 1..10", field="n")
        return n.to_bytes(32, "big")

    def mine(self, count: int = 1) -> None:
        self.tester.mine_blocks(count, coinbase="0x" + f"{self._branch:040x}")

    def auto_mine(self, on: bool) -> None:
        if on:
            self.tester.enable_auto_mine_transactions()
        else:
            self.tester.disable_auto_mine_transactions()

    def snapshot(self) -> int:
        return self.tester.take_snapshot()

    def reorg_to(self, snapshot_id: int, new_block_count: int) -> None:
        """Drop every block after the snapshot and mine `new_block_count` different ones."""
        self.tester.revert_to_snapshot(snapshot_id)
        self._branch += 1
        self.mine(new_block_count)

    def deploy_token(self, asset: str = "USDT", key: bytes | None = None) -> str:
        """Deploy the assembled ERC-20 (see erc20.py) from a dev account and register it."""
        from .erc20 import TOKEN_DECIMALS, token_init_code

        raw = self._sign({"data": token_init_code(), "value": 0, "gas": 1_000_000}, key or self.dev_key(1))
        txid = self.adapter.broadcast(raw).txid
        if not self.tester.auto_mine_transactions:
            self.mine(1)
        contract = self.adapter.w3.eth.get_transaction_receipt(txid)["contractAddress"]
        self.adapter.add_token(asset, contract, TOKEN_DECIMALS)
        return contract

    def sign_token_transfer(self, key: bytes, asset: str, to: str, amount_minor: int) -> bytes:
        spec = self.adapter.token(asset)
        data = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex(validate_eth_address(to, "to")[2:])
        data += amount_minor.to_bytes(32, "big")
        return self._sign({"to": spec.contract, "data": data, "value": 0, "gas": 100_000}, key)

    def _sign(self, fields: dict, key: bytes) -> bytes:
        acct = Account.from_key(key)
        fee = self.adapter.estimate_fee()
        tx = {
            "type": 2,
            "maxFeePerGas": fee.fee_rate_minor,
            "maxPriorityFeePerGas": fee.priority_fee_minor,
            "nonce": self.adapter.w3.eth.get_transaction_count(acct.address, "pending"),
            "chainId": self.adapter.chain_id,
            **fields,
        }
        return bytes(acct.sign_transaction(tx).raw_transaction)

    def sign_transfer(self, key: bytes, to: str, value_wei: int, *, chain_id: int | None = None,
                      nonce: int | None = None) -> bytes:
        """A real EIP-1559 transfer signed with eth-account (the dev chain's fee market applies)."""
        acct = Account.from_key(key)
        w3 = self.adapter.w3
        fee = self.adapter.estimate_fee()
        tx = {
            "type": 2,
            "to": validate_eth_address(to, "to"),
            "value": value_wei,
            "gas": TRANSFER_GAS,
            "maxFeePerGas": fee.fee_rate_minor,
            "maxPriorityFeePerGas": fee.priority_fee_minor,
            "nonce": w3.eth.get_transaction_count(acct.address, "pending") if nonce is None else nonce,
            "chainId": self.adapter.chain_id if chain_id is None else chain_id,
        }
        return bytes(acct.sign_transaction(tx).raw_transaction)
