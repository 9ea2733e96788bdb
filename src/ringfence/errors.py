"""The ringfence error hierarchy.

Every error the system raises on purpose derives from `RingfenceError`. Each subclass carries a
stable machine `code` (never renumbered, safe for clients to switch on), an HTTP status for the API
edge, and a message that tells the user what to do. Subclasses also inherit the stdlib exception that
fits (`ValueError`, `KeyError`, `PermissionError`, ...) so callers can catch either way.

Validation errors name the offending `field`. Messages never contain secrets: callers pass field
names and rules, not raw secret values.

An invariant violation inside the engine is *not* in this hierarchy's "handle it" family:
`InvariantViolation` means the shard must halt and an operator must look.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "RingfenceError",
    "ValidationError",
    "InvalidAmount",
    "UnknownAsset",
    "UnknownAccount",
    "DuplicateAsset",
    "NotFound",
    "Conflict",
    "InsufficientFunds",
    "Forbidden",
    "Unauthorized",
    "RateLimited",
    "Halted",
    "ShardHalted",
    "Busy",
    "JournalCorrupt",
    "SnapshotInvalid",
    "InvariantViolation",
    "NotDurable",
    "OutcomeUnknown",
    "DataDirLocked",
    "ConfigError",
    "SigningRefused",
    "NonceReused",
    "AttestationInvalid",
    "QuorumNotNominated",
    "DutiesViolation",
    "KeyStoreError",
    "SignerUnavailable",
    "CeremonyFailed",
    "InvalidSignatureShare",
    "AuthenticationFailed",
    "SecondFactorRequired",
    "WithdrawalsLocked",
    "AccountFrozen",
    "ProofInvalid",
    "error_codes",
]


class RingfenceError(Exception):
    """Root of every deliberate ringfence error."""

    code: str = "RF_ERROR"
    http_status: int = 500
    default_message: str = "ringfence failed to complete the request"

    def __init__(self, message: str | None = None, *, field: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.field = field
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.details:
            out["details"] = {k: v for k, v in self.details.items() if not k.startswith("_")}
        return out

    def __str__(self) -> str:
        if self.field is not None and not self.message.startswith(self.field):
            return f"{self.field}: {self.message}"
        return self.message


class ValidationError(RingfenceError, ValueError):
    code = "RF_VALIDATION"
    http_status = 400
    default_message = "the request is not valid"


class InvalidAmount(ValidationError):
    code = "RF_INVALID_AMOUNT"
    default_message = "the amount is not a valid decimal for this asset"


class UnknownAsset(RingfenceError, KeyError):
    code = "RF_UNKNOWN_ASSET"
    http_status = 404
    default_message = "no such asset is registered"

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return RingfenceError.__str__(self)


class DuplicateAsset(RingfenceError, ValueError):
    code = "RF_DUPLICATE_ASSET"
    http_status = 409
    default_message = "an asset with this code is already registered with different properties"


class NotFound(RingfenceError, LookupError):
    code = "RF_NOT_FOUND"
    http_status = 404
    default_message = "not found"


class UnknownAccount(NotFound, KeyError):
    code = "RF_UNKNOWN_ACCOUNT"
    default_message = "no such account exists"

    def __str__(self) -> str:
        return RingfenceError.__str__(self)


class Conflict(RingfenceError, ValueError):
    code = "RF_CONFLICT"
    http_status = 409
    default_message = "the request conflicts with existing state"


class InsufficientFunds(RingfenceError, ValueError):
    code = "RF_INSUFFICIENT_FUNDS"
    http_status = 400
    default_message = "the account does not have enough available balance"


class Unauthorized(RingfenceError, PermissionError):
    code = "RF_UNAUTHORIZED"
    http_status = 401
    default_message = "authentication is required"


class Forbidden(RingfenceError, PermissionError):
    code = "RF_FORBIDDEN"
    http_status = 403
    default_message = "this action is not allowed"


class AuthenticationFailed(Unauthorized):
    """Credentials did not match. The message never says which part was wrong or whether it exists."""

    code = "RF_AUTH_FAILED"
    default_message = "the credentials are not valid"


class SecondFactorRequired(Forbidden):
    code = "RF_SECOND_FACTOR_REQUIRED"
    default_message = "confirm this action with a fresh second factor (authenticator code or passkey)"


class WithdrawalsLocked(Forbidden):
    code = "RF_WITHDRAWALS_LOCKED"
    default_message = "withdrawals are locked after a recent security change; try again later"


class AccountFrozen(Forbidden):
    code = "RF_ACCOUNT_FROZEN"
    default_message = "this account is frozen for your protection; contact support to unfreeze it"


class RateLimited(RingfenceError):
    code = "RF_RATE_LIMITED"
    http_status = 429
    default_message = "too many requests; slow down and retry later"


class Halted(RingfenceError):
    code = "RF_HALTED"
    http_status = 503
    default_message = "this scope is halted; only an operator quorum can lift the halt"


class ShardHalted(RingfenceError):
    """A command broke an engine invariant earlier: the whole shard refuses everything until an operator acts."""

    code = "RF_SHARD_HALTED"
    http_status = 503
    default_message = "the engine shard is halted after a broken invariant; an operator must look"


class Busy(RingfenceError):
    """Too much of one kind of work is queued (password hashing): refused before it starts, nothing changed."""

    code = "RF_BUSY"
    http_status = 503
    default_message = "the server is busy; try again in a moment"


class PrecheckFailed(RingfenceError):
    """A command's precheck failed on an unexpected error (a bug): that command is refused, nothing
    changed, the node carries on. The cause is logged by whoever catches it, not sent to the client."""

    code = "RF_PRECHECK_FAILED"
    http_status = 500
    default_message = "the command could not be checked; it was refused and nothing changed"


class NotDurable(RingfenceError, OSError):
    code = "RF_NOT_DURABLE"
    http_status = 503
    default_message = "the command was not made durable and was not applied; it is safe to retry"


class OutcomeUnknown(RingfenceError, OSError):
    """The command's record was written but the journal's fsync failed: it may or may not be durable.

    Recovery on restart decides (the record is applied if it survived intact). The node stops
    accepting commands: after a failed fsync the file's state is unknown, and retrying the fsync
    could report success for data the kernel already dropped (PostgreSQL's "fsyncgate").
    """

    code = "RF_OUTCOME_UNKNOWN"
    http_status = 503
    default_message = (
        "the outcome is unknown: the command may or may not have been recorded; check its status "
        "after the node restarts before retrying"
    )


class DataDirLocked(RingfenceError, BlockingIOError):
    """Another process holds the data directory's writer lock; a second writer would corrupt the journal."""

    code = "RF_DATA_DIR_LOCKED"
    http_status = 409
    default_message = "the data directory is in use by another ringfence process"


class JournalCorrupt(RingfenceError, OSError):
    code = "RF_JOURNAL_CORRUPT"
    http_status = 500
    default_message = "the journal failed verification; recovery stopped so that no data is silently lost"


class SnapshotInvalid(RingfenceError, OSError):
    code = "RF_SNAPSHOT_INVALID"
    http_status = 500
    default_message = "the snapshot failed verification"


class ConfigError(RingfenceError, ValueError):
    code = "RF_CONFIG"
    http_status = 500
    default_message = "the configuration is not valid"


class SigningRefused(Forbidden):
    code = "RF_SIGNING_REFUSED"
    default_message = "the signer refused to sign this request"


class NonceReused(Conflict):
    code = "RF_NONCE_REUSED"
    default_message = "this signing nonce was already used or never issued; request fresh commitments"


class AttestationInvalid(SigningRefused):
    code = "RF_ATTESTATION_INVALID"
    default_message = "the policy-approval attestation is missing, expired, reused or not valid for this transfer"


class QuorumNotNominated(SigningRefused):
    code = "RF_QUORUM_NOT_NOMINATED"
    default_message = "the signatures do not come from the randomly nominated quorum for this transfer"


class DutiesViolation(Forbidden):
    code = "RF_SEGREGATION_OF_DUTIES"
    default_message = "segregation of duties: this person or role may not perform this step of the transfer"


class KeyStoreError(RingfenceError, OSError):
    code = "RF_KEY_STORE"
    http_status = 500
    default_message = "the key store could not be opened (wrong passphrase, tampered file or missing key)"


class SignerUnavailable(RingfenceError, ConnectionError):
    code = "RF_SIGNER_UNAVAILABLE"
    http_status = 503
    default_message = "a signer did not answer; the signature was not produced"


class CeremonyFailed(RingfenceError, ValueError):
    code = "RF_CEREMONY_FAILED"
    http_status = 400
    default_message = "a key ceremony round failed verification; nothing was stored"


class InvalidSignatureShare(RingfenceError, ValueError):
    code = "RF_BAD_SIG_SHARE"
    http_status = 400
    default_message = "a signature share failed verification"
class ProofInvalid(ValidationError):
    """A proof-of-solvency document (liabilities proof, root file, reserves proof) failed verification."""

    code = "RF_POR_PROOF_INVALID"
    default_message = "the proof did not verify"


class InvariantViolation(RingfenceError, AssertionError):
    """A broken invariant: the shard halts and an operator is paged. Never caught to carry on."""

    code = "RF_INVARIANT"
    http_status = 500
    default_message = "an engine invariant was violated; the shard is halted"


def error_codes() -> dict[str, type[RingfenceError]]:
    """Every registered error code, for documentation and for tests that codes stay unique."""
    seen: dict[str, type[RingfenceError]] = {}
    stack: list[type[RingfenceError]] = [RingfenceError]
    while stack:
        cls = stack.pop()
        seen.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return seen


# --- chain layer (chains) -------------------------------------------------------------


class InvalidAddress(ValidationError):
    """An address that fails its checksum, belongs to another network or is not of this chain."""

    code = "RF_INVALID_ADDRESS"
    default_message = "the address is not valid for this chain and network"


class UnsupportedAsset(ValidationError):
    code = "RF_UNSUPPORTED_ASSET"
    default_message = "this asset is not supported on this chain"


class TransactionRejected(RingfenceError, ValueError):
    """A chain (or the simulator) refused a transaction; `details['reason']` is a stable short code."""

    code = "RF_TX_REJECTED"
    http_status = 400
    default_message = "the chain rejected the transaction"


class ChainUnavailable(RingfenceError, ConnectionError):
    code = "RF_CHAIN_UNAVAILABLE"
    http_status = 503
    default_message = "the chain node could not be reached; retry later"


__all__ += ["InvalidAddress", "UnsupportedAsset", "TransactionRejected", "ChainUnavailable"]
__all__ += ["PrecheckFailed"]


_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
#: A URL's user information runs up to the last `@` of its part of the word (the next `,scheme://` of
#: a list of URLs starts another part), whatever it holds before: a raw `@`, `/`, `:`, `?` or `#`
#: in a password, which URL parsers take (SQLAlchemy's password runs to the `@`, nats-py's netloc to
#: the last `@`), is hidden with the rest of it (fresh-eyes review, session 19; a `/` showed the
#: password, session 21). With no `@` in its part (a password holding `,x://`), up to the word's last `@`.
#: A scheme starts after no scheme character (not `\b`: a run like `a.a.a.a` was scanned again from
#: each of its letters), and is looked for only before its word's last `@` (`without_credentials`):
#: a word of many `x://` and no `@` after them had each tried to its end (a 20,000-character word
#: took 9 s, quadratic; fresh-eyes review, session 21). Words end at ASCII whitespace only (re.ASCII),
#: where a shell splits a command line: a password holding a no-break space was shown.
_URL_USERINFO = re.compile(rf"(?P<scheme>(?<![A-Za-z0-9+.-]){_SCHEME})(?:(?P<info>(?:[^\s,]|,(?!{_SCHEME}))+)@|(?P<wide>\S+)@)",
                           re.ASCII)
_WORD = re.compile(r"\S+", re.ASCII)


def without_credentials(text: str) -> str:
    """`text` with the credentials of every URL in it hidden: `nats://user:pw@host` becomes
    `nats://user:***@host`, `nats://TOKEN@host` (a user name alone is a token to NATS) and
    `redis://:pw@host` become `nats://***@host` / `redis://:***@host`. For what a process writes
    about itself (its command line in a lock file, a child's command line in an error). A password
    may hold any character but ASCII whitespace (a word of a command line ends there); a URL whose path
    holds an `@` is hidden up to it (safe rather than exact: nothing tells it from a password)."""

    def hide(m: re.Match[str]) -> str:
        user, colon, _ = (m.group("info") or m.group("wide")).partition(":")
        return m.group("scheme") + (f"{user}:***@" if colon else "***@")

    def word(m: re.Match[str]) -> str:
        w = m.group()
        last = w.rfind("@") + 1  # a URL's user information ends at an `@` of its word: none after the last
        if not last or "://" not in w[:last]:
            return w
        return _URL_USERINFO.sub(hide, w[:last]) + w[last:]

    return _WORD.sub(word, text)


__all__ += ["without_credentials"]
