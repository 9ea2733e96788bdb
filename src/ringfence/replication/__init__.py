"""The journal replicated over NATS JetStream: a primary that acknowledges only replicated batches,
a hot standby that follows and verifies, leadership with a fencing epoch.

Stream `S` (file storage) on subject `rf.S.batches` holds one message per journal record: its body
is the record's payload, its headers the record header (first sequence, count, previous hash,
record hash), the leader's fencing epoch and the state hash after the batch. The primary publishes
each batch while its local fsync runs and acknowledges no client before the stream's ack, with
`Nats-Msg-Id` (a retried publish is stored once) and `Nats-Expected-Last-Sequence` (the stream
refuses a batch from any writer that has not seen every earlier message). A pipelined primary
(`Node(pipeline=True)`) has several batches in flight: each message expects the sequence the one
before it will take and, while that one is unacknowledged, `Nats-Expected-Last-Msg-Id` its id, so
nothing behind a refused message can be stored (a fence that took the refused one's place would
otherwise match the next one's expected sequence).

Leadership lives in the JetStream KV bucket `S-leader`, key `leader`: `{"epoch": E, "node": ID}`,
changed only with revision-checked updates (`ringfence replication promote`), so two promotions
cannot both win. A promoted standby first catches up with the stream, then publishes a *fence*
message carrying its new epoch with the expected-last-sequence it verified: from then on every
publish of the deposed primary is refused by the stream (wrong last sequence), and a follower
refuses any batch whose epoch is below the newest fence it has seen. A deposed primary stops and
answers its waiting clients `OutcomeUnknown`: it can never get a batch accepted.

Invariants a follower checks on every message: the signature (below), sequence continuity, the
hash chain (the record hash recomputed from header and payload), the epoch, and a state check on
every batch (the state hash after applying it; or, marked, one that comes later — see `_apply`).

Signatures (intruder review of #21, F1/F2; docs/resilience.md "Who a standby trusts"). Every
message a node publishes (each batch, each chunk of a large one, a fence) carries `Rf-Node` (the
node id) and `Rf-Sig`: the hex Ed25519 signature, with the node's key (`nodekey`, DATA_DIR/node.key),
over these bytes, lines joined by "\n" (no final newline):

    ringfence-replication-v1
    stream=STREAM
    NAME:VALUE        one line per header whose name starts with "Rf-", except Rf-Sig, sorted by name
    body-sha256=HEX   SHA-256 of the message body (the chunk), lower-case hex

The signed headers include `Rf-Pos` (the stream sequence the message must be stored at: a copy
stored anywhere else is a replay) and `Rf-Session` (random per `Replicator`). A follower checks the
signature against its *peers file* before anything else, then that the signer is the node entitled
to the epoch: the one whose signed fence opened it, or for the first epoch it reads, the first
signer it verified, which must be the stream's first primary (`first_primary=NODE` in the URL, else
the first node of the peers file: `Follower._check_first`); the first primary opens an empty stream
with a fence whose grant says `opens` (`Replicator._open_stream`), so message 1 is its own even after a
failover before any batch. Anything refused stops the follower for good (`Refused`, kept in
`Follower.refused`); nothing of it is appended.

The leader record is signed too: `sig` is the hex Ed25519 signature of the node it names over
`ringfence-leader-v1\nSTREAM\n` + the record without `sig` as canonical JSON (sorted keys, no
spaces). A standby fences only on a record naming itself that carries its own valid signature;
a primary treats a record with a missing or invalid one as forged (`_claim`, `_renew`). Its
`renewal` counter orders the records of an epoch: a standby believes only one above every one it
saw (`lease_key`; a replayed older record renews no lease).

A signature says who wrote a fence, not that the node may lead: the fence's body is its *grant*
(`fence_grant`: the operators' approval tokens, or a lease take-over), which every standby checks
against its own replica's staff register before it accepts the epoch (`grant_refusal`,
`Follower._check_grant`): a stolen node key alone opens no epoch (third intruder review of #21, R1).

The outcome digest: the primary hashes the events each batch produced (`outcome_digest`: SHA-256
of their canonical encoding, per command, in order) and sends it on its next batch
(`Rf-Outcome-Of: SEQ`, `Rf-Outcome: HEX`); the follower compares it with the events its own apply
produced for that batch. It costs in proportion to the batch, not to the whole state, so every
batch's result is checked even when the full state hash is taken rarely or off the sequencer
(`state_hash_every`, `state_hash_later`) to keep acknowledgements fast.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlparse

from ..errors import ConfigError, JournalCorrupt, OutcomeUnknown, RingfenceError, without_credentials
from ..engine.core import STATE_DIGEST_FORMAT
from .epochs import EpochBackwards, EpochMemory, bounded_int, epoch_above
from . import untrusted

__all__ = ["ReplicationTarget", "NatsLink", "Replicator", "Follower", "Fenced", "PromotionRefused", "promote", "leader_of",
           "parse_target", "withdraw", "PROMOTE_ACTION", "promote_subject", "masked", "Refused", "signed_bytes", "sign_leader", "lease_key",
           "leader_signature_ok", "harden", "HARDENED", "EpochBackwards", "console_time"]

T = TypeVar("T")
_log = logging.getLogger("ringfence.replication")
KIND_BATCH = "batch"
KIND_FENCE = "fence"
PUBLISH_TIMEOUT_S = 5
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_WRONG_LAST_MSG_ID = 10070
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as nodekey's
POLL_S = 0.02  # float-ok: follower poll interval, seconds
PROGRESS_S = 30  # the standby's progress line: at most this often, seconds
STREAM_CHECK_S = 2  # the primary re-reads its stream's configuration and tail this often, seconds


class Fenced(RingfenceError, PermissionError):
    code = "RF_FENCED"
    http_status = 503
    default_message = "this node is no longer the primary: another node holds a newer epoch"


class Refused(RingfenceError, PermissionError):
    """A follower refused a stream message (unsigned, badly signed, replayed, from a node not
    entitled to its epoch, without a state check, or undecodable): it stops; nothing was appended."""

    code = "RF_REPLICATION_REFUSED"
    http_status = 503
    default_message = "the standby refused a stream message"


SIG_DOMAIN = b"ringfence-replication-v1"
LEADER_DOMAIN = b"ringfence-leader-v1"
_SIG_DOMAIN_TEXT = SIG_DOMAIN.decode()


def signed_bytes(stream: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """What `Rf-Sig` signs (module docstring): the stream, every `Rf-*` header but Rf-Sig, the body's SHA-256."""
    lines = [_SIG_DOMAIN_TEXT, "stream=" + stream]  # joined, then encoded once: the same bytes
    lines += [f"{name}:{headers[name]}" for name in sorted(headers) if name[:3] == "Rf-" and name != "Rf-Sig"]
    lines.append("body-sha256=" + hashlib.sha256(body).hexdigest())
    return "\n".join(lines).encode()


def sign_message(key: Any, node_id: str, stream: str, headers: dict[str, str], body: bytes) -> None:
    """Add `Rf-Node` and `Rf-Sig` to `headers` (every other Rf-* header must be in place)."""
    headers["Rf-Node"] = node_id
    headers["Rf-Sig"] = key.sign(signed_bytes(stream, headers, body)).hex()


class FastSigner:
    """`key.sign` for the hot path (every batch the primary publishes), done by libsodium (PyNaCl)
    when the key's seed can be read: Ed25519 signatures are deterministic (RFC 8032), so the bytes
    are the very ones `key.sign` gives, for about two thirds of its CPU (22.5 against 33.7 us a
    message, session 19). Checked once on a probe message; any key whose seed is not readable,
    or that signs otherwise, keeps signing itself. `used_libsodium` says which one signs."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self._secret = b""  # libsodium's secret key (seed + public key), once it signed the probe as `key` does
        try:
            from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
            from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

            _, secret = crypto_sign_seed_keypair(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
            probe = b"ringfence-signer-probe"
            same = crypto_sign(probe, secret)[:64] == key.sign(probe)
        except Exception:  # noqa: BLE001 - not a readable Ed25519 key (an HSM's, a test double): it signs itself
            return
        self._crypto_sign = crypto_sign  # returns the signed message: the signature, then the data
        if same:
            self._secret = secret

    @property
    def used_libsodium(self) -> bool:
        return bool(self._secret)

    def sign(self, data: bytes) -> bytes:
        if self._secret:
            return self._crypto_sign(data, self._secret)[:64]
        return bytes(self.key.sign(data))


def _leader_bytes(stream: str, record: Mapping[str, Any]) -> bytes:
    fields = {k: v for k, v in record.items() if k != "sig"}
    return b"\n".join([LEADER_DOMAIN, stream.encode(), json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()])


def sign_leader(key: Any, stream: str, record: dict[str, Any]) -> bytes:
    """The KV value of a leader record signed by `key` (the key of the node it names)."""
    return json.dumps(dict(record, sig=key.sign(_leader_bytes(stream, record)).hex())).encode()


#: A standby's answer to a promotion request (`promotion_answer`) is signed under this domain.
ANSWER_DOMAIN = b"ringfence-promote-answer-v1"
#: An answer quotes at most this much of its reason (and never the request: intruder review of session 16, F1).
MAX_REASON_CHARS = 500
_NONCE = re.compile(r"[0-9a-f]{16,64}")


def _answer_bytes(stream: str, answer: Mapping[str, Any]) -> bytes:
    fields = {k: v for k, v in answer.items() if k != "sig"}
    return b"\n".join([ANSWER_DOMAIN, stream.encode(), json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()])


def promotion_answer(key: Any, stream: str, node: str, request: Any, revision: int, status: str, reason: str = "",
                     approved_by: Sequence[str] = ()) -> bytes:
    """The KV value of standby `node`'s answer to the promotion request at `revision`: its status, the
    request's epoch and nonce (when they are well formed), the reason cut to MAX_REASON_CHARS, signed
    with the node's key over all of it. It never echoes the request: a request under the 16 KiB read
    limit could make an answer over the bucket's 64 KiB (F1); `promote` trusts only an answer signed by
    the standby for its own nonce (F4: an old genuine leader record written back was taken for one)."""
    fields = request if isinstance(request, dict) else {}
    nonce = fields.get("nonce")
    answer = {"status": status, "revision": int(revision), "node": node,
              "epoch": bounded_int(fields.get("epoch")),
              "nonce": nonce if isinstance(nonce, str) and _NONCE.fullmatch(nonce) else "",
              "reason": reason[:MAX_REASON_CHARS], "approved_by": [str(a)[:64] for a in approved_by][:64]}
    return json.dumps(dict(answer, sig=key.sign(_answer_bytes(stream, answer)).hex())).encode()


def answer_signature_ok(answer: Mapping[str, Any], stream: str, public: Any) -> bool:
    """Whether a promotion answer carries a valid signature by `public` (`promotion_answer`)."""
    from ..nodekey import verify

    sig = answer.get("sig")
    if not isinstance(sig, str) or len(sig) != 128:
        return False
    try:
        return verify(public, bytes.fromhex(sig), _answer_bytes(stream, answer))
    except ValueError:
        return False


def leader_signature_ok(record: Mapping[str, Any] | None, stream: str, public: Any) -> bool:
    """Whether `record` carries a valid signature by `public` (an Ed25519 public key)."""
    from ..nodekey import verify

    sig = (record or {}).get("sig")
    if record is None or not isinstance(sig, str) or len(sig) != 128:
        return False
    try:
        raw = bytes.fromhex(sig)
    except ValueError:
        return False
    return verify(public, raw, _leader_bytes(stream, record))


@dataclass(frozen=True)
class ReplicationTarget:
    servers: str
    stream: str
    replicas: int = 1
    #: Primary: renew the leadership lease every lease_ms/3 and stop acknowledging when it could
    #: not for lease_ms. 0: no lease (promotion by operator only).
    lease_ms: int = 0
    #: Standby: promote itself when the leader's lease has not been renewed for 2 x lease_ms.
    auto_promote: bool = False
    #: Primary: put the state hash in every Nth batch (1: every batch; it serialises the whole
    #: engine state, so large states may want a larger N). Followers check it where present.
    state_hash_every: int = 1
    #: tls:// only: verify the server's certificate against this CA file (default: the system's CAs).
    tls_ca: str = ""
    #: Primary: compute the state hash of every Nth batch off the sequencer thread (a forked child
    #: hashes a copy-on-write image of the state) and send it in a later batch's headers; the batch
    #: itself is published at once and marked `Rf-State-Pending`. Followers check it when it comes.
    state_hash_later: bool = False
    #: Primary: send, with each batch, the engine's incremental state digest after the batch before
    #: it (`Engine.state_digest`, cheap: in proportion to what changed); followers check every one.
    state_digest: bool = True
    #: Standby: the node that opens the stream (signs its first message, epoch 1 usually); "": the first
    #: node of the peers file. A node key alone opens no stream (intruder review of session 15, F2).
    first_primary: str = ""
    #: The command-line option the URL came from (`--replicate`, `--standby`, `--nats`): what an error about
    #: this stream or server names.
    option: str = field(default="--replicate", compare=False)

    @property
    def display(self) -> str:
        """The server URL safe to print: a password in it is replaced by ***."""
        return masked(self.servers)

    def display_url(self, **options: object) -> str:
        if self.tls_ca:
            options = {"tls_ca": quote(self.tls_ca, safe="/"), **options}
        query = "&".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in options.items())
        return f"{self.display}/{self.stream}" + (f"?{query}" if query else "")

    @property
    def subject(self) -> str:
        return f"rf.{self.stream}.batches"

    @property
    def bucket(self) -> str:
        return f"{self.stream}-leader"


#: The URL's numeric options and their allowed ranges (a 0..1 range is a flag).
URL_OPTIONS = {"replicas": (1, 5), "lease_ms": (100, 600_000), "auto_promote": (0, 1), "state_hash_every": (1, 1_000_000),
               "state_hash_later": (0, 1), "state_digest": (0, 1)}


def _allowed(key: str) -> str:
    low, high = URL_OPTIONS[key]
    return "0|1" if (low, high) == (0, 1) else f"{low}..{high}"


def parse_target(url: str, option: str = "--replicate") -> ReplicationTarget:
    """`nats://host:4222/STREAM?replicas=3&lease_ms=3000&auto_promote=1&state_hash_every=1&state_digest=1`
    (stream defaults to RINGFENCE)."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - a port that is not a number (or out of range) raises here, not later
    except ValueError as err:  # `nats://u:pw@[::1` (intruder review of session 19, F5): said, never a traceback
        raise ConfigError(f"must be a nats://host:port/STREAM URL ({err})", field=option) from None
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
        raise ConfigError("must be a nats://host:port/STREAM URL", field=option)
    stream = parsed.path.strip("/") or "RINGFENCE"
    if not stream.replace("-", "").replace("_", "").isalnum() or len(stream) > 64:
        raise ConfigError("the stream name may hold letters, digits, '-' and '_' (at most 64)", field=option)
    values = {"replicas": 1, "lease_ms": 0, "auto_promote": 0, "state_hash_every": 1, "state_hash_later": 0, "state_digest": 1}
    tls_ca = first_primary = ""
    for part in filter(None, parsed.query.split("&")):
        key, _, value = part.partition("=")
        if key == "tls_ca":  # the CA that signed the NATS server's certificate (tls:// only)
            tls_ca = unquote(value)
            if parsed.scheme != "tls" or not Path(tls_ca).is_file():
                raise ConfigError("tls_ca must name a readable CA file and needs a tls:// URL", field=option)
            continue
        if key == "first_primary":  # the node the stream's first message must come from (a standby's check)
            first_primary = unquote(value)
            if not _NODE_ID.fullmatch(first_primary):
                raise ConfigError(f"first_primary={first_primary!r}: a node id (letters, digits, '.', '_', '-', at most 64)",
                                  field=option)
            continue
        if key not in URL_OPTIONS:
            known = ", ".join(f"{k}={_allowed(k)}" for k in URL_OPTIONS)
            raise ConfigError(f"unknown option {key!r} in the URL; the options are {known}, tls_ca=FILE and "
                              "first_primary=NODE", field=option)
        low, high = URL_OPTIONS[key]
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise ConfigError(f"option {key}={value!r} is out of range: {key} must be {_allowed(key)}", field=option)
        values[key] = int(value)
    netloc = parsed.netloc
    secret = os.environ.get("RINGFENCE_NATS_PASSWORD", "")
    if parsed.username and parsed.password is None and secret:  # keeps the password out of `ps` output
        netloc = f"{parsed.username}:{quote(secret, safe='')}@{netloc.split('@', 1)[1]}"
    return ReplicationTarget(f"{parsed.scheme}://{netloc}", stream, values["replicas"], values["lease_ms"],
                             bool(values["auto_promote"]), values["state_hash_every"], tls_ca,
                             bool(values["state_hash_later"]), bool(values["state_digest"]), first_primary, option)


def nats_failures() -> tuple[type[BaseException], ...]:
    """What a NATS call may raise besides this module's own errors: the client's errors (API errors,
    a key deleted, its timeouts), a call's timeout on the link's loop, a broken connection."""
    from nats.errors import Error as NatsError

    return (NatsError, asyncio.TimeoutError, concurrent.futures.TimeoutError, ConnectionError)


def console_time() -> str:
    """Now in UTC, ISO 8601 to the second ("2026-03-01T09:30:05Z"), at the start of a standby's lines on
    the leadership changing (a lease claimed, a promotion approved or refused, promoted): an operator
    reading the node's console learns when it happened. The node's console only: nothing the engine
    applies or hashes reads this clock."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def nats_failed(err: BaseException) -> str:
    """One line for a failed NATS call (`nats_failures`): the error's type and its first 200 characters."""
    return f"{type(err).__name__} {str(err)[:200]}".strip()


def masked(servers: str) -> str:
    """A NATS server URL safe to print: a password in it is replaced by ***, and so is a user name
    given without one (nats-py sends that as a token: `nats://TOKEN@host`; intruder review of
    session 19, F3)."""
    return without_credentials(servers)


def login_name(servers: str) -> str:
    """The NATS user a server URL logs in as, safe to print: "" for none; "***" for a name given without a
    password (RINGFENCE_NATS_PASSWORD unset, none in the URL) that is not one of `nats-config`'s service users
    (auth.SERVICES: rf-node...), since nats-py sends that name as a token (`nats://TOKEN@host`), as `masked` hides it."""
    from .auth import SERVICES

    parsed = urlparse(servers)
    user = unquote(parsed.username or "")
    return "***" if user and parsed.password is None and user not in SERVICES else user


def _secrets_of(servers: str) -> list[str]:
    """The password, or the token, a server URL carries (to scrub from a client library's message)."""
    parsed = urlparse(servers)
    return [s for s in (parsed.password if parsed.password is not None else parsed.username,) if s]


#: The settings of the stream and of the leadership bucket: nobody may roll up (a `Nats-Rollup`
#: header erases a subject, or the whole stream, leader record included), purge, or delete a message
#: (intruder review of #21, F3). nats-server keeps deny_delete/deny_purge once set (an update
#: cannot undo them); the users of `nats-config` cannot update a stream at all.
HARDENED = {"allow_rollup_hdrs": False, "deny_delete": True, "deny_purge": True}
#: The largest value the leadership bucket takes (a leader record or a promotion request with a few
#: hundred ~250-byte approval tokens fits): a NATS user allowed to write `promote.*` cannot store
#: megabytes per key (intruder review of #21, I6e). Set when the bucket is made; an existing bucket must
#: take values at least this large (`_check_bucket`; the count of keys stays unbounded: docs/resilience.md).
BUCKET_MAX_VALUE = 64 * 1024


def _weak_settings(config: Any) -> list[str]:
    return [f"{key}={str(bool(getattr(config, key))).lower()}" for key, want in HARDENED.items()
            if bool(getattr(config, key)) != want]


def _check_hardened(config: Any, target: "ReplicationTarget") -> None:
    weak = _weak_settings(config)
    if weak:
        raise ConfigError(f"JetStream stream {config.name} has {', '.join(weak)}: anyone who may publish to it could erase "
                          "the leader record or the journal (made by an older ringfence?); harden it once, as a NATS user "
                          f"allowed to update streams: ringfence replication harden --nats {target.display_url()}",
                          field=target.option)


def _value(config: Any, key: str) -> Any:
    value = getattr(config, key, None)
    return getattr(value, "value", value)  # an enum, or the server's string


def _lossy_settings(config: Any) -> list[str]:
    """What of the journal stream's configuration could lose or alter an acknowledged message without
    the writer knowing (intruder review of session 15, F4): each as `field=value (want ...)`. Every
    node relies on the stream keeping every message it stored, in order, for good."""
    wants: list[tuple[str, Callable[[Any], bool], str]] = [
        ("storage", lambda v: v in (None, "file"), "file"),
        ("retention", lambda v: v in (None, "limits"), "limits"),
        ("max_msgs", lambda v: v in (None, -1, 0), "-1, no limit"),
        ("max_bytes", lambda v: v in (None, -1, 0), "-1, no limit"),
        ("max_age", lambda v: not v, "0, no limit"),
        ("max_msgs_per_subject", lambda v: v in (None, -1, 0), "-1, no limit"),
        ("discard", lambda v: v in (None, "old", "new"), "old or new (with no limits nothing is discarded)"),
        ("mirror", lambda v: not v, "none"),
        ("sources", lambda v: not v, "none"),
        ("republish", lambda v: not v, "none"),
        ("subject_transform", lambda v: not v, "none"),
        ("allow_msg_ttl", lambda v: not v, "false: a message header could expire a message"),
        ("first_seq", lambda v: v in (None, 0, 1), "1"),
    ]
    return [f"{key}={_value(config, key)!r} (want {want})" for key, ok, want in wants if not ok(_value(config, key))]


def _check_stream(config: Any, target: "ReplicationTarget") -> None:
    """Refuse a journal stream that may drop, expire or copy messages (`_lossy_settings`), naming each field."""
    lossy = _lossy_settings(config)
    subjects = list(_value(config, "subjects") or [])
    if subjects != [target.subject]:  # another subject lets anyone allowed to publish on it into the journal stream
        lossy.append(f"subjects={subjects!r} (want [{target.subject!r}] only)")
    if _value(config, "max_msg_size") not in (None, -1, 0):  # a record the primary may write could be refused
        lossy.append(f"max_msg_size={_value(config, 'max_msg_size')!r} (want -1, no limit)")
    lossy += _unsafe_flags(config)
    if (_value(config, "num_replicas") or 1) != target.replicas:  # F3 of session 16: made with 1 where 3 were asked for
        lossy.append(f"num_replicas={_value(config, 'num_replicas')!r} (want {target.replicas}, the URL's replicas=)")
    if lossy:
        raise ConfigError(f"JetStream stream {config.name} has {'; '.join(lossy)}: it could drop or expire messages the "
                          "primary acknowledged, and a standby would miss them; every node needs the stream as ringfence "
                          "makes it (file storage, no limits, no mirror/sources/republish). A stream's storage and "
                          "retention cannot be changed: move to a new stream name (docs/resilience.md), or have a NATS "
                          "user allowed to update streams set the limits to -1", field=target.option)


def _unsafe_flags(config: Any) -> list[str]:
    """no_ack makes the stream store without answering (anyone on the network could then answer a
    publish in its name), sealed makes it refuse every write (intruder review of session 16, F2)."""
    return [f"{key}={str(bool(_value(config, key))).lower()} (want false)" for key in ("no_ack", "sealed")
            if _value(config, key)]


#: The leadership bucket's history per key, as `ensure_stream_and_bucket` makes it.
BUCKET_HISTORY = 16


def _check_bucket(config: Any, target: "ReplicationTarget") -> None:
    """Refuse a leadership bucket not as ringfence makes it: memory storage, fewer replicas than the
    URL asks for, an age limit or another history would lose the leader record or its history
    (intruder review of session 16, F3); nor one with a limit that refuses or drops a write (a byte
    or message limit, a value size under the answers', retention by interest, another subject, a mirror
    or source: second intruder review, R2, where a bucket pre-created with max_bytes=1500 took the
    cluster down at the first failover). The journal stream's rules (`_lossy_settings`), with the
    bucket's own history and value size."""
    # message TTLs: nats-py's create_key_value set allow_msg_ttl on buckets of the first versions, and a server
    # never turns it off; a TTL header expires only the writer's own value, which that writer may delete anyway
    wrong = [w for w in _lossy_settings(config) if not w.startswith(("max_msgs_per_subject=", "allow_msg_ttl="))]
    wrong += [f"{key}={_value(config, key)!r} (want {want})" for key, ok, want in [
        ("num_replicas", lambda v: (v or 1) == target.replicas, f"{target.replicas}, the URL's replicas="),
        ("max_msgs_per_subject", lambda v: v == BUCKET_HISTORY, str(BUCKET_HISTORY)),
        ("max_msg_size", lambda v: v in (None, -1, 0) or v >= BUCKET_MAX_VALUE, f"{BUCKET_MAX_VALUE} or more"),
        ("discard_new_per_subject", lambda v: not v, "false: a key's next value would be refused"),
    ] if not ok(_value(config, key))] + _unsafe_flags(config)
    subjects = list(_value(config, "subjects") or [])
    if subjects != [f"$KV.{target.bucket}.>"]:
        wrong.append(f"subjects={subjects!r} (want ['$KV.{target.bucket}.>'] only)")
    if wrong:
        raise ConfigError(f"JetStream stream {config.name} (the leadership bucket) has {'; '.join(wrong)}: it could lose "
                          "the leader record or its history; every node needs it as ringfence makes it: move to a new "
                          "stream name (docs/resilience.md), or have a NATS user allowed to update streams fix it",
                          field=target.option)


def harden(target: "ReplicationTarget") -> list[str]:
    """Update the stream and the leadership bucket of `target` to the `HARDENED` settings (needs a
    NATS user allowed to update streams; none of `nats-config`'s users is). Returns what changed."""
    from dataclasses import replace

    link = NatsLink(target)
    changed: list[str] = []
    try:
        for name in (target.stream, f"KV_{target.bucket}"):
            try:
                config = link.call(link.js.stream_info(name)).config
                weak = _weak_settings(config)
                if weak:
                    link.call(link.js.update_stream(replace(config, **HARDENED)))
            except nats_failures() as err:
                if not link.refused:
                    raise
                user = login_name(target.servers) or "(none)"  # a timeout is only the symptom
                raise ConfigError(f"cannot update the stream {name}: NATS user {user} may not (the server said: "
                                  f"{link.refused.strip()}); run it as a NATS user allowed to update streams (none of "
                                  "`ringfence replication nats-config`'s users is)", field=target.option) from err
            if weak:
                changed.append(f"{name}: {', '.join(weak)} -> " + ", ".join(f"{k}={str(v).lower()}" for k, v in HARDENED.items()))
    finally:
        link.close()
    return changed


#: the NATS servers (as displayed) this process already warned about for requiring no credentials
_WARNED_OPEN: set[str] = set()
#: the NATS servers (as displayed) this process already warned about for a password sent in plain text (dev mode)
_WARNED_PLAIN: set[str] = set()


def pinned_tls(target: ReplicationTarget) -> bool:
    """Whether `target` is a tls:// URL with its own CA (`tls_ca=`): the server's certificate is verified against
    that CA alone (never the system's) and against the URL's host name."""
    return target.servers.startswith("tls://") and bool(target.tls_ca)


def check_transport(target: ReplicationTarget, *, credentials_only: bool = False) -> None:
    """Outside dev mode (RINGFENCE_MODE), refuse a NATS URL that is not tls:// with a pinned CA (`tls_ca=`): over
    plain text, or TLS verified against the system's CAs, whoever holds the port (a local user who binds it while
    nats-server is down or restarting) receives the password of every client that (re)connects, and can acknowledge
    the primary's publishes that no replica holds (intruder review of session 23). In dev mode a password in plain
    text is said once per server. `credentials_only` (the dr drill's checks, whose nodes run in dev mode): refuse
    only a URL that carries a password or token."""
    if pinned_tls(target):
        from ..owned import trust_file_problem

        reason = trust_file_problem(target.tls_ca) if os.environ.get("RINGFENCE_MODE", "dev") != "dev" else None
        if reason is not None:  # read again at every (re)connect: its owner could make it their CA later
            raise ConfigError(f"tls_ca={target.tls_ca}: {reason}: they could make it their own CA, and the NATS password "
                              f"would go to their server at {target.display}; keep the CA file in folders only this user or "
                              "root may write (`ringfence replication nats-config --out` makes one)", field=target.option)
        return
    fix = ("use tls://USER@HOST:PORT/STREAM?tls_ca=CA with the CA that signed nats-server's certificate: "
           "`ringfence replication nats-config` makes both and prints each service's URL")
    credential = bool(_secrets_of(target.servers))
    if os.environ.get("RINGFENCE_MODE", "dev") != "dev" and (credential or not credentials_only):
        what = "send the NATS password" if credential else "trust acknowledgements"
        how = "without TLS" if not target.servers.startswith("tls://") else "over TLS without a pinned CA (tls_ca=)"
        raise ConfigError(f"refusing to {what} {how} to {target.display}: whoever holds that port (say while nats-server "
                          f"restarts) would {'receive the password and ' if credential else ''}acknowledge publishes no "
                          f"replica holds; {fix} (RINGFENCE_MODE=dev allows plain nats:// for development)",
                          field=target.option)
    if credential and target.display not in _WARNED_PLAIN:
        _WARNED_PLAIN.add(target.display)
        _log.warning("replication: the NATS password goes to %s without TLS and a pinned CA (dev mode only; refused "
                     "outside it): whoever holds the port receives it; %s", target.display, fix)


class PlainTextRefused(Exception):
    """A tls:// connection on which TLS did not start before the CONNECT line (the server's INFO did not ask for it):
    the CONNECT, and the password in it, is never sent."""


class _EofReceivedNoise(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl": nats-py's protocol returns
    True from eof_received() (to keep a plain connection half-open), which asyncio's SSL transport ignores and logs as a
    warning each time the server ends a TLS connection. Only that message: asyncio's others go through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "returning true from eof_received() has no effect when using ssl"


def quiet_asyncio_eof() -> None:
    """Install `_EofReceivedNoise` on the 'asyncio' logger (once per process): made with each NATS client."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _EofReceivedNoise) for f in logger.filters):
        logger.addFilter(_EofReceivedNoise())


def guarded_client() -> Any:
    """A nats-py client that sends its CONNECT line (user, password) only over TLS when the URL is tls://.

    nats-py starts TLS only when the server's INFO asks for it (`tls_required`); a listener that leaves it out
    (anyone who took the port) got the CONNECT, password and all, in plain text before the link could check
    `encrypted()`. (TLS before the first byte, `tls_handshake_first`, needs nats-server 2.10.4; this machine's
    is 2.9.) Checked on every (re)connect, the reconnects of a running node included."""
    from nats.aio.client import Client
    from nats.errors import Error as NatsError

    quiet_asyncio_eof()  # a TLS connection's end logs asyncio's eof_received() warning otherwise

    class Refused(PlainTextRefused, NatsError):  # a nats error: nats-py says it to error_cb and gives up the server
        pass

    class GuardedClient(Client):  # type: ignore[misc]
        def _connect_command(self) -> bytes:
            uri = getattr(self._current_server, "uri", None)
            if getattr(uri, "scheme", "") == "tls":
                writer = getattr(self._transport, "_io_writer", None)
                if writer is None or writer.get_extra_info("ssl_object") is None:
                    raise Refused("the server did not start TLS on a tls:// URL: the CONNECT (and its password) was "
                                  "not sent")
            return bytes(super()._connect_command())

    return GuardedClient()


def _login_refused(err: BaseException) -> bool:
    text = str(err).lower()
    return "authorization violation" in text or "authentication expired" in text or "authentication revoked" in text


def login_refused_message(target: ReplicationTarget, said: str) -> str:
    """Why NATS refused this login, and the fix: no user, a user without a password (RINGFENCE_NATS_PASSWORD
    unset), or a user name or password the server does not take. Never the password."""
    parsed = urlparse(target.servers)
    user = login_name(target.servers)
    where = f"NATS at {target.display} refused the login (the server said: {said.strip()})"
    if user == "***":  # a name without a password, none of nats-config's users: nats-py sent it as a token
        return (f"{where}: the URL names *** with no password, which is sent as a token (nats://TOKEN@HOST:PORT/STREAM), "
                "and the server does not take it; check the token, or, if *** is a user name, set RINGFENCE_NATS_PASSWORD "
                "to its password")
    if not user:
        return (f"{where}: it requires credentials; name the user in the URL, e.g. nats://rf-node@HOST:PORT/STREAM, "
                "with its password in RINGFENCE_NATS_PASSWORD (`ringfence replication nats-config` writes both)")
    if parsed.password is None:
        return (f"{where}: user {user} was given no password: RINGFENCE_NATS_PASSWORD is unset (or empty) and the URL "
                f"has none; set RINGFENCE_NATS_PASSWORD to {user}'s password (the file {user}.password that "
                "`ringfence replication nats-config` wrote)")
    return (f"{where}: the server does not take user {user} with this password; check the user name and "
            "RINGFENCE_NATS_PASSWORD (or the password in the URL) against the server's config")


#: the subject of JetStream's stream listing (`missing_stream`'s hint), lower-case as a violation names it
_STREAM_LIST = "$js.api.stream.list"


class NatsLink:
    """A NATS connection on its own asyncio loop thread, callable from the sequencer thread."""

    def __init__(self, target: ReplicationTarget) -> None:
        from nats.errors import Error as NatsError

        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ringfence-nats", daemon=True)
        self._thread.start()
        #: the server's last "permissions violation" (its answer to a subject this user may not use, which
        #: otherwise shows only as a request that times out)
        self.refused = ""
        #: the server's "Authorization Violation" (it refused this login); said by the start-up error,
        #: not as a raw line before it
        self.login_refused = ""
        #: while the stream and bucket are set up (`ensure_stream_and_bucket`, a list only then): the permissions
        #: violations seen, said by its error if it fails on them (it quotes `refused`), logged when it ends
        #: otherwise; never a raw line before the error that explains it (the standby's and the primary's starts
        #: alike). Outside it (None) each is logged at once: a command that never sets up (harden) keeps the server's words
        self._held: list[str] | None = None
        self._held_lock = threading.Lock()

        self.plain_refused = ""

        async def on_error(err: Exception) -> None:  # one line, no traceback, no URL (it may hold a password)
            if isinstance(err, PlainTextRefused):
                self.plain_refused = str(err)
                return  # the ConfigError below says it
            if _login_refused(err):
                self.login_refused = str(err)[:200]
            if self.login_refused and getattr(self, "nc", None) is None:
                return  # connecting, refused (then reset by the server): the ConfigError below says it, with the fix
            said = str(err)[:200]
            if "permissions violation" in said.lower():
                if _STREAM_LIST in said.lower():
                    return  # `missing_stream`'s listing, a hint: it says "not listed (this NATS user may not list streams)"
                self.refused = said
                with self._held_lock:
                    if self._held is not None:
                        self._held.append(said)
                        return
            _log.warning("nats: %s: %s", type(err).__name__, said)

        try:
            check_transport(target)  # outside dev mode: tls:// with a pinned CA, or nothing is sent
        except ConfigError:
            self.close()
            raise
        tls: dict[str, Any] = {}
        if target.servers.startswith("tls://"):
            import ssl

            # verifies the chain (against tls_ca alone when given: create_default_context loads the system's CAs
            # only without one) and the URL's host name
            tls["tls"] = ssl.create_default_context(cafile=target.tls_ca or None)
        # a service of `replication nats-config` (rf-node...) gets its replies on its own prefix, the only
        # subject it may subscribe to: nats' shared `_INBOX.>` would show every client's replies
        from .auth import inbox_prefix

        inbox = inbox_prefix(unquote(urlparse(target.servers).username or ""))
        async def connect() -> Any:
            client = guarded_client()
            await client.connect(target.servers, connect_timeout=3, max_reconnect_attempts=2, reconnect_time_wait=0.5,
                                 allow_reconnect=True, error_cb=on_error, inbox_prefix=inbox, **tls)
            return client

        try:
            self.nc = self.call(connect(), 20)
        except (OSError, asyncio.TimeoutError, NatsError) as err:  # ssl.SSLError is an OSError
            if self.plain_refused:
                self.close()
                raise ConfigError(f"NATS at {target.display} did not start TLS: a tls:// URL is never served over plain "
                                  "text, and the password was not sent; check that the server has TLS on (a listener "
                                  "that is not nats-server may hold the port)", field=target.option) from None
            if self.login_refused:  # reached, and it refused the credentials: say so, not "cannot reach"
                self.close()
                raise ConfigError(login_refused_message(target, self.login_refused), field=target.option) from None
            self.close()
            reason = without_credentials(str(err))
            for secret in _secrets_of(target.servers):
                reason = reason.replace(secret, "***")
            raise ConfigError(f"cannot reach NATS at {target.display}: {type(err).__name__} {reason}", field=target.option) from None
        if tls and not self.encrypted():
            # nats-py starts TLS only when the server's first line asks for it, so a server (or anyone in
            # between) that leaves it out gets plain text: a tls:// URL is refused then, never downgraded.
            # (The CONNECT line has gone out by now; TLS before the first byte, `tls_handshake_first`, needs
            # nats-server 2.10.4 or later on the other side.)
            self.close()
            raise ConfigError(f"NATS at {target.display} did not start TLS: a tls:// URL is never served over plain text; "
                              "check that the server has TLS on", field=target.option)
        self._check_auth(target)
        self.js = self.nc.jetstream()
        self._inbox = inbox
        self._directs: list[Any] = []  # `direct()`'s connections: closed with this link (a partition closes them too)
        #: Records larger than this go as several messages (headers need room under max_payload).
        self.chunk_bytes = max(64 * 1024, int(self.nc.max_payload) - 64 * 1024)

    def _check_auth(self, target: ReplicationTarget) -> None:
        """A NATS server that lets anyone connect without credentials (its INFO has no auth_required) lets
        anyone on the network change the stream or answer a publish in its name (intruder review of
        session 16, F2): refused outside dev mode (RINGFENCE_MODE), said loudly in it."""
        info = getattr(self.nc, "_server_info", None) or {}
        if info.get("auth_required"):
            return
        fix = ("give every service its own credential: `ringfence replication nats-config` writes a nats-server config "
               "with users rf-node, rf-operator and rf-monitor; then use tls://rf-node@HOST:PORT/STREAM?tls_ca=CA (the URL it "
               "prints) with the password in RINGFENCE_NATS_PASSWORD")
        if os.environ.get("RINGFENCE_MODE", "dev") != "dev":
            self.close()
            raise ConfigError(f"NATS at {target.display} requires no credentials: anyone who reaches it could rewrite the "
                              f"journal stream's settings or forge its acknowledgements; {fix} (dev mode only, "
                              "RINGFENCE_MODE=dev, allows a server without users)", field=target.option)
        if target.display in _WARNED_OPEN:  # once per server and process: a standby connects again to promote
            return
        _WARNED_OPEN.add(target.display)
        _log.warning("replication: NATS at %s requires no credentials: anyone who reaches it could forge the stream's "
                     "acknowledgements (refused outside dev mode); %s", target.display, fix)

    def encrypted(self) -> bool:
        """Whether the connection runs over TLS (its stream writer carries an SSL object); False when that
        cannot be told."""
        writer = getattr(getattr(self.nc, "_transport", None), "_io_writer", None)
        return writer is not None and writer.get_extra_info("ssl_object") is not None

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = PUBLISH_TIMEOUT_S) -> T:  # float-ok: seconds
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Start `coro` on the link's loop and return at once; `.result(timeout)` waits for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def ensure_stream_and_bucket(self, *, check: bool = True, read: bool = False) -> Any:
        """The stream and the leadership bucket, created when missing with `HARDENED` settings (no
        rollup headers, no purge, no message deletes). One that exists with weaker settings (made by
        an older version) is refused, naming the setting and the fix (`ringfence replication
        harden`): the node's NATS user may not update a stream, by design. `check=False` (status)
        only reads. `read` (a standby): also read the stream's first message, so a NATS user that may
        not read it is named here, at the start, not by a TimeoutError at the first poll."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        t = self.target
        kv_stream = f"KV_{t.bucket}"

        async def setup() -> Any:
            try:
                info = await self.js.stream_info(t.stream)
            except NotFoundError:
                info = await self.js.add_stream(StreamConfig(name=t.stream, subjects=[t.subject], storage=StorageType.FILE,
                                                             num_replicas=t.replicas, duplicate_window=120.0, **HARDENED))
            if check:
                _check_hardened(info.config, t)
                _check_stream(info.config, t)
            try:
                kv = await self.js.key_value(t.bucket)
            except NotFoundError:  # BucketNotFoundError: first use of this stream
                # as nats-py's create_key_value (history 16), but without rollups or purges
                await self.js.add_stream(StreamConfig(
                    name=kv_stream, subjects=[f"$KV.{t.bucket}.>"], storage=StorageType.FILE, num_replicas=t.replicas,
                    max_msgs_per_subject=BUCKET_HISTORY, max_msgs=-1, max_consumers=-1, duplicate_window=120.0,
                    max_msg_size=BUCKET_MAX_VALUE, discard=DiscardPolicy.NEW, **HARDENED))
                kv = await self.js.key_value(t.bucket)
            if check:
                kv_config = (await self.js.stream_info(kv_stream)).config
                _check_hardened(kv_config, t)
                _check_bucket(kv_config, t)
            if read:
                try:
                    await self.js.get_msg(t.stream, 1)
                except NotFoundError:
                    pass  # an empty stream (or its first message gone): readable
            return kv

        from nats.errors import TimeoutError as NatsTimeout

        with self._held_lock:
            self._held = []
        quoted = False  # the error below says the server's words: not logged again
        try:
            return self.call(setup())
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError, NatsTimeout):
            user = login_name(t.servers) or "(none)"
            if self.refused:
                quoted = True
                raise ConfigError(f"NATS user {user} may not use stream {t.stream} at {t.display} (the server said: "
                                  f"{self.refused}); each service needs its own credential of `ringfence replication nats-config` "
                                  "for this stream: rf-node to serve (--replicate or --standby), rf-operator to promote, "
                                  "rf-monitor for status", field=t.option) from None
            raise ConfigError(f"NATS at {t.display} did not answer for stream {t.stream} within {PUBLISH_TIMEOUT_S} s "
                              "(is JetStream enabled?)", field=t.option) from None
        finally:  # set up, or failed otherwise: a violation seen meanwhile is worth a line; later ones are logged at once
            with self._held_lock:
                held, self._held = self._held or [], None
            for said in [] if quoted else held:
                _log.warning("nats: %s", said)

    def direct(self, name: str) -> Any:
        """A blocking connection to the same server for one thread (`direct.DirectLink`: the classic
        sequencer's publish path), connected; None (logged) if it cannot connect: the link's own
        path serves then."""
        from .direct import DirectLink

        link = DirectLink(self.target.servers, inbox=self._inbox, tls_ca=self.target.tls_ca, name=name,
                          timeout_s=PUBLISH_TIMEOUT_S)
        try:
            link.connect()
        except (OSError, ConnectionError, ValueError) as err:  # ssl.SSLError is an OSError
            _log.warning("replication: the direct publish connection to %s failed (%s: %s); batches go through "
                         "the link's loop", self.target.display, type(err).__name__, nats_failed(err))
            return None
        self._directs.append(link)
        return link

    def _close_directs(self) -> None:
        for link in getattr(self, "_directs", ()):
            link.dead = True  # never opened again: the next publish fails
            link.close()

    def disconnect(self) -> None:
        """Drop the NATS connection (a partition): every later call fails at once."""
        self._close_directs()
        self.call(self.nc.close(), 5)

    def close(self) -> None:
        """Close the connection and stop the loop's thread; a second call does nothing (a failed start
        closes the link, and its owner's close comes after)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._close_directs()
        nc = getattr(self, "nc", None)
        if nc is not None:
            try:
                self.call(nc.close(), 5)
            except (OSError, asyncio.TimeoutError, RuntimeError):
                pass  # closing a connection that is already gone
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def lease_key(record: Mapping[str, Any]) -> tuple[int, int, int]:
    """How new a (verified) leader record is: (epoch, 1, renewal) — its writer counts `renewal` up
    in every record of an epoch — or, for a record of a primary before session 15 (no `renewal`),
    (epoch, 0, renewed_at_ns). A standby believes only a record whose key is above every one it saw:
    an older genuine record put back (a replay) neither renews nor ends a lease (intruder review of
    #21, R2)."""
    epoch = bounded_int(record.get("epoch")) or 0
    renewal = bounded_int(record.get("renewal"))
    if renewal is not None:
        return epoch, 1, renewal
    at = record.get("renewed_at_ns")
    return epoch, 0, at if type(at) is int and 0 <= at < 2**63 else 0


def leader_of(link: NatsLink, kv: Any) -> tuple[dict[str, Any] | None, int]:
    """The leader record and its KV revision (None, 0 when nobody has claimed leadership yet)."""
    from nats.js.errors import KeyNotFoundError

    try:
        entry = link.call(kv.get("leader"))
    except KeyNotFoundError:
        return None, 0
    try:  # anyone with a node's credential may write anything here (F1: nested JSON raised RecursionError)
        record = untrusted.loads(entry.value, untrusted.MAX_RECORD_BYTES, "the leader record")
    except untrusted.UnreadableValue as err:
        return {"epoch": 0, "node": "", "unreadable": True, "reason": str(err)}, int(entry.revision)
    if not isinstance(record, dict) or not isinstance(record.get("node"), str) or bounded_int(record.get("epoch")) is None \
            or any(key in record and bounded_int(record[key]) is None for key in ("lease_ms", "renewal")):
        # not a record any node wrote (a forgery; an epoch or lease that is not a number of at most 18
        # digits): shown as such; no node acts on it
        return {"epoch": 0, "node": "", "unreadable": True, "reason": "not a leader record (a node id, an epoch, lease_ms and "
                "renewal of at most 18 digits)"}, int(entry.revision)
    return record, int(entry.revision)


def missing_stream(link: NatsLink) -> str:
    """"" when the target's stream exists (or this NATS user may not ask); else a sentence for the
    operator naming the streams the server holds: a mistyped name would otherwise go unnoticed."""
    from nats.js.errors import NotFoundError

    async def look() -> str:
        try:
            await link.js.stream_info(link.target.stream)
            return ""
        except NotFoundError:
            pass
        except Exception:  # noqa: BLE001 - not allowed to look (a per-service user): the caller's next step says
            return ""
        try:  # a per-service user (`replication nats-config`) may not list streams: no answer within 2 s
            names = sorted(i.config.name for i in await asyncio.wait_for(link.js.streams_info(), 2)
                           if not i.config.name.startswith("KV_"))
            here = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "none"
        except Exception:  # noqa: BLE001 - the listing is a hint only
            here = "not listed (this NATS user may not list streams)"
        return f"stream {link.target.stream} does not exist on {link.target.display} (is the name right? streams here: {here})"

    # longer than nats' own request timeout, so a refused look ends inside `look` (the caller's next step,
    # ensure_stream_and_bucket, names a permissions violation) instead of as a bare TimeoutError here
    return link.call(look(), PUBLISH_TIMEOUT_S + 5)


PROMOTE_ACTION = "replication.promote"


def promote_subject(stream: str, node_id: str, epoch: int) -> list[Any]:
    """What each operator signs for a promotion: the stream, the node and the epoch it would lead."""
    return [stream, node_id, epoch]


def request_key(node_id: str) -> str:
    return f"promote.{node_id}"


def verified_leader(record: dict[str, Any] | None, stream: str,
                    peers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`record` when it carries the valid signature of the node it names by `peers` (or, without
    `peers`, unchecked, as before session 15); None for anything else: an unverified record counts
    for nothing, least of all its epoch (intruder review, F3)."""
    if record is None or peers is None:
        return record
    public = None if record.get("unreadable") else peers.get(str(record.get("node")))
    return record if public is not None and leader_signature_ok(record, stream, public) else None


async def _leader_history(link: "NatsLink", upto: int | None = None) -> list[bytes]:
    """The values of the leader record the bucket still holds, oldest first (it keeps 16 revisions of
    a key): read one by one with next_by_subj, which every service may (`auth.permissions`). `upto`:
    only the revisions up to that one (a record's own, and those before it)."""
    from nats.js.errors import NotFoundError

    values: list[bytes] = []
    seq = 1
    for _ in range(64):  # bounded: the bucket keeps 16 revisions of a key
        try:
            msg = await link.js.get_msg(f"KV_{link.target.bucket}", seq=seq, subject=f"$KV.{link.target.bucket}.leader",
                                        next=True)
        except NotFoundError:
            break
        if upto is not None and int(msg.seq) > upto:
            break  # written after the revision asked about
        values.append(msg.data or b"")
        seq = int(msg.seq) + 1
    return values


def _leader_records(link: "NatsLink", hint: str = "", upto: int | None = None) -> list[dict[str, Any]]:
    """The leader key's history as JSON objects, oldest first (`upto`: up to that revision); values that
    do not decode to an object are skipped (anyone with a node's credential writes there). With `hint`
    (what the caller then does without it), an unreadable history is logged as a warning and read as
    empty; without, its error goes up."""
    try:
        history = link.call(_leader_history(link, upto))
    except Exception as err:  # noqa: BLE001 - the caller chose: a hint only
        if not hint:
            raise
        _log.warning("replication: the leader record's history is not readable (%s)%s", type(err).__name__, hint)
        return []
    records = []
    for value in history:
        try:
            record = untrusted.loads(value, untrusted.MAX_RECORD_BYTES, "a leader record")
        except untrusted.UnreadableValue:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def newest_verified(link: "NatsLink", peers: Mapping[str, Any], upto: int | None = None) -> dict[str, Any] | None:
    """The newest (`lease_key`) leader record in the key's history (`upto`: up to that revision) that
    verifies against `peers`, or None (none, or the history not readable: a hint only). `replication
    status` calls the current record replayed when one written before it is newer (intruder review of
    session 16, F4: records never expire). It passes the record's revision: a renewal written after the
    record was read is the primary moving on, not the record being old (a new user's check of #21: a
    healthy primary renewing every second was called replayed in 3 of 6 calls)."""
    newest: dict[str, Any] | None = None
    for old in _leader_records(link, hint=": no record is called replayed", upto=upto):
        if bounded_int(old.get("epoch")) is None or not isinstance(old.get("node"), str) \
                or any(k in old and bounded_int(old[k]) is None for k in ("lease_ms", "renewal")):
            continue
        if verified_leader(old, link.target.stream, peers) is not None and (newest is None or lease_key(old) > lease_key(newest)):
            newest = old
    return newest


def next_epoch_seen(link: "NatsLink", record: dict[str, Any] | None, peers: Mapping[str, Any] | None) -> int:
    """The next epoch as an operator's command sees it: above the leader `record`'s when it verifies
    (`verified_leader`); when it does not or is missing, above the highest verified record the bucket still holds
    in the key's history (a forged record's epoch counts for nothing, intruder review F3). An
    operator may not read the stream's messages (they hold orders): the standby decides, from its
    memory and every fence it read, and names the epoch when it differs ("sign again")."""
    genuine = verified_leader(record, link.target.stream, peers)
    if genuine is not None or peers is None:
        return int((genuine or {}).get("epoch", 0)) + 1
    # unverified, or missing (deleted: the key's history still holds the records before; session 16, 2)
    highest = 0  # the history is a hint only: the standby names the epoch it expects
    for old in _leader_records(link, hint=": the next epoch is a guess"):
        epoch = bounded_int(old.get("epoch"))
        if epoch is not None and verified_leader(old, link.target.stream, peers) is not None:
            highest = max(highest, epoch)
    return highest + 1


def promote(target: ReplicationTarget, node_id: str, approvals: Sequence[str] = (), *, epoch: int | None = None,
            wait_s: float = 0.0, peers: Mapping[str, Any] | None = None) -> dict[str, Any]:  # float-ok: seconds
    """Operator command: ask the standby `node_id` to take the leadership at the next epoch.

    The request (KV key `promote.NODE`: the epoch and the operators' approval tokens) is verified
    by the standby itself against the staff register of its own replica at its last applied
    sequence (`Follower.consider_promotion`); only then does the standby change the leader record
    (a revision-checked update). With `wait_s`, wait for its verdict: returns the new leader record
    or raises `PromotionRefused` with the standby's reason. Given `peers`, a leader record counts
    (its epoch, the verdict) only when it verifies against them (`verified_leader`)."""
    link = NatsLink(target)
    try:
        return _promote(link, target, node_id, approvals, epoch, wait_s, peers)
    except nats_failures() as err:
        if link.refused:  # the server refused a subject to this login: a timeout here is only its symptom
            user = login_name(target.servers) or "(none)"
            raise ConfigError(f"NATS user {user} may not ask standby {node_id} to take over (stream {target.stream}): the "
                              f"server said {link.refused.strip()}; promote with an operator's login, e.g. "
                              "nats://rf-operator@HOST:PORT/STREAM with its password in RINGFENCE_NATS_PASSWORD "
                              "(`ringfence replication nats-config`)", field="--nats") from None
        raise ConfigError(f"NATS at {target.display} failed while asking standby {node_id} to take over (stream "
                          f"{target.stream}): {nats_failed(err)}; ask again once NATS answers", field="--nats") from None
    finally:
        link.close()


def _promote(link: NatsLink, target: ReplicationTarget, node_id: str, approvals: Sequence[str], epoch: int | None,
             wait_s: float, peers: Mapping[str, Any] | None) -> dict[str, Any]:  # float-ok: seconds
    missing = missing_stream(link)
    if missing:  # a mistyped name: nobody follows that stream (and asking must not create it)
        raise PromotionRefused(f"{missing}: no standby follows it", field="--nats")
    kv = link.ensure_stream_and_bucket()
    current, _ = leader_of(link, kv)
    next_epoch = next_epoch_seen(link, current, peers)
    if epoch is not None and epoch < next_epoch:
        raise PromotionRefused(f"the approvals are for epoch {epoch} but the next epoch is {next_epoch}: "
                               "sign again", field="--epoch")
    # above the record's: the standby asks for it when it saw a higher epoch than the record's
    next_epoch = epoch or next_epoch
    # a fresh nonce: only the standby's answer signed over it counts (F4 of session 16: an old genuine leader
    # record naming the node, written back while this waited, was taken for its promotion)
    nonce = secrets.token_hex(16)
    request = {"epoch": next_epoch, "node": node_id, "approvals": list(approvals), "status": "requested",
               "requested_at_ns": time.time_ns(), "nonce": nonce}
    revision = int(link.call(kv.put(request_key(node_id), json.dumps(request).encode())))
    wait = _Wait(link, kv, target, node_id, nonce, revision, next_epoch, current, peers)
    try:
        record = wait.until(time.monotonic() + wait_s)
    except KeyboardInterrupt:  # interrupted: the request is withdrawn as on a timeout (unless taken meanwhile)
        _withdraw_own(link, kv, node_id, revision, nonce, next_epoch, "`promote` was interrupted")
        raise
    if record is not None:
        return record
    if not wait_s:
        return {"previous": current, **request}
    if not wait.taken() and not _took_record(link, target.stream, peers, node_id, next_epoch, nonce):
        # still pending: withdrawn before this reports a failure, revision-checked, so that a standby that starts
        # later does not act on a promotion reported as failed (a new user's check of #21: one started a minute
        # later deposed the healthy primary). A standby takes a request only by first writing its own answer over
        # that same revision (`Follower.consider_promotion`): one of the two writes fails, never both pass.
        if _withdraw_own(link, kv, node_id, revision, nonce, next_epoch, f"no answer within {wait_s:g} s"):
            raise PromotionRefused(f"standby {node_id} did not answer within {wait_s:g} s: is it running `serve --standby` "
                                   f"with --node-id {node_id}? The request is withdrawn: a standby that starts later does "
                                   "not act on it", field="--node-id")
        # the request changed since this wrote it: the standby took it (or answered it) meanwhile: its verdict
        record = wait.until(time.monotonic() + WITHDRAW_GRACE_S)
        if record is not None:
            return record
    if wait.taken() and wait.status() == "accepted":
        raise PromotionRefused(f"standby {node_id} accepted the promotion and took the leader record, but its fence was not "
                               f"in the stream within {wait_s:g} s: its epoch is not open yet; see its log and "
                               "`ringfence replication status`", field="--wait-s")
    if wait.taken():
        raise PromotionRefused(f"standby {node_id} took the promotion request (it is checking it or writing its leader "
                               f"record), but gave no verdict within {wait_s:g} s: see its log and `ringfence replication "
                               "status` before promoting again", field="--wait-s")
    if _took_record(link, target.stream, peers, node_id, next_epoch, nonce):
        raise PromotionRefused(f"standby {node_id} took the leader record for this promotion at epoch {next_epoch}, but "
                               "no answer of it says whether its fence is in the stream (its answers were overwritten "
                               "or could not be written, or the fence is not in yet): see `ringfence replication "
                               "status` and its log before promoting again", field="--wait-s")
    raise PromotionRefused(f"standby {node_id} did not answer within {wait_s:g} s, and the request {request_key(node_id)} "
                           "was written over before it could be withdrawn (another request, or someone's write): see "
                           "`ringfence replication status`; `ringfence replication promote --withdraw` withdraws a "
                           "pending request", field="--node-id")


#: After a withdrawal failed (the standby took the request meanwhile), `promote` waits this much longer for its verdict.
WITHDRAW_GRACE_S = 30
#: The status of a request `promote` withdrew (it gave up waiting, or `promote --withdraw`): no standby acts on it.
WITHDRAWN = "withdrawn"


class _Wait:
    """`promote` waiting for the standby's answer to its request (KV `promote.NODE` at `revision`, with `nonce`)."""

    def __init__(self, link: NatsLink, kv: Any, target: ReplicationTarget, node_id: str, nonce: str, revision: int,
                 epoch: int, current: dict[str, Any] | None, peers: Mapping[str, Any] | None) -> None:
        self.link, self.kv, self.target, self.node_id, self.nonce, self.revision = link, kv, target, node_id, nonce, revision
        self.epoch, self.current, self.peers = epoch, current, peers
        self.public = None if peers is None else peers.get(node_id)
        self.answer: Any = None
        self.ours = False

    def taken(self) -> bool:
        """Whether the last answer read is the standby's, signed over this request, and says it took it."""
        return self.status() in ("taking", "accepted")

    def status(self) -> str:
        return str(self.answer.get("status")) if self.ours and isinstance(self.answer, dict) else ""

    def until(self, deadline: float) -> dict[str, Any] | None:  # float-ok: monotonic seconds
        """The new leader record once the standby says its fence is in; None at `deadline`; `PromotionRefused`
        on its refusal (or a failed or unknown outcome, or the request deleted)."""
        from nats.js.errors import NotFoundError

        node_id, answer = self.node_id, None
        while time.monotonic() < deadline:
            try:  # the standby's answer, or whatever else someone wrote to the key meanwhile
                answer = untrusted.loads(self.link.call(self.kv.get(request_key(node_id))).value,
                                         untrusted.MAX_ANSWER_BYTES, "the answer")
            except untrusted.UnreadableValue:
                answer = None
            except NotFoundError:  # KeyDeletedError: someone deleted or purged the request
                raise PromotionRefused(f"the promotion request {request_key(node_id)} was deleted while waiting for "
                                       f"standby {node_id}'s answer: someone withdrew it; ask again if it is still "
                                       "wanted", field="--node-id") from None
            except nats_failures() as err:  # read again until the deadline: going up, the request stayed pending
                # (not withdrawn) behind a failure reported as "ask again" (review of session 23's withdrawal)
                _log.warning("replication: reading the answer of standby %s failed (%s); reading again until the "
                             "deadline", node_id, nats_failed(err))
                time.sleep(0.1)
                continue
            self.answer = answer
            self.ours = ours = isinstance(answer, dict) and answer.get("nonce") == self.nonce \
                and answer.get("revision") == self.revision and answer.get("node") == node_id \
                and (self.peers is None or (self.public is not None
                                            and answer_signature_ok(answer, self.target.stream, self.public)))
            if ours and isinstance(answer, dict) and answer.get("status") == "refused":
                raise PromotionRefused(f"standby {node_id} refused the promotion: {answer.get('reason')}",
                                       field="--key")
            if ours and isinstance(answer, dict) and answer.get("status") == "unknown":
                raise PromotionRefused(f"the promotion's outcome is unknown: {answer.get('reason')}; check `ringfence "
                                       "replication status` and the standby's log before promoting again", field="--node-id")
            if ours and isinstance(answer, dict) and answer.get("status") == "failed":
                raise PromotionRefused(f"the promotion failed: {answer.get('reason')}; the leader record names {node_id} "
                                       "but no fence opened its epoch: promote a standby again with fresh approvals "
                                       "(docs/resilience.md)", field="--key")
            if ours and isinstance(answer, dict) and answer.get("status") == "fenced" and answer.get("epoch") == self.epoch:
                # done only once its fence is in the stream: a record alone (the fence then refused) was an outage
                # reported as a success (review of #21, 1); and only on the standby's answer signed over this nonce
                # (F4 of session 16)
                try:
                    leader, _ = leader_of(self.link, self.kv)
                except nats_failures():  # the signed answer is the proof (below): never a failure reported here
                    leader = None
                if leader is not None and leader["node"] == node_id and int(leader["epoch"]) == self.epoch \
                        and verified_leader(leader, self.target.stream, self.peers) is not None:
                    return {"previous": self.current, **leader}
                # the standby wrote its record, fenced and said so (signed); the record moved on since (renewed by
                # another epoch, or written over): the answer is the proof
                return {"previous": self.current, "node": node_id, "epoch": self.epoch,
                        "approved_by": answer.get("approved_by")}
            time.sleep(0.1)
        return None


def _withdrawal(node_id: str, epoch: int | None, nonce: str, why: str) -> bytes:
    return json.dumps({"status": WITHDRAWN, "node": node_id, "epoch": epoch, "nonce": nonce, "reason": why,
                       "withdrawn_at_ns": time.time_ns()}).encode()


def _withdraw_own(link: NatsLink, kv: Any, node_id: str, revision: int, nonce: str, epoch: int, why: str) -> bool:
    """Replace this command's own request (at `revision`) with a withdrawal, revision-checked: True when
    withdrawn; False when the key changed since (the standby took or answered it, or someone wrote it).
    A NATS failure: `PromotionRefused` saying the request may still be pending and how to withdraw it."""
    from nats.js.errors import KeyWrongLastSequenceError

    try:
        link.call(kv.update(request_key(node_id), _withdrawal(node_id, epoch, nonce, why), last=revision))
    except KeyWrongLastSequenceError:
        return False
    except Exception as err:  # noqa: BLE001 - said with what it means: the request may still be taken
        raise PromotionRefused(f"standby {node_id} gave no verdict ({why}) and the request could not be withdrawn "
                               f"({nats_failed(err)}): it stays valid until its approvals expire (--ttl-s), and a standby "
                               f"{node_id} that starts meanwhile takes it; withdraw it with `ringfence replication "
                               "promote --withdraw` once NATS answers", field="--node-id") from None
    return True


def withdraw(target: ReplicationTarget, node_id: str) -> str:
    """Operator command: withdraw standby `node_id`'s pending promotion request (KV `promote.NODE` still
    "requested"), revision-checked: a standby that took it meanwhile wins and this raises
    `PromotionRefused`. Returns what was done, for the operator."""
    from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

    link = NatsLink(target)
    try:
        missing = missing_stream(link)
        if missing:
            raise PromotionRefused(f"{missing}: nothing to withdraw", field="--nats")
        kv = link.ensure_stream_and_bucket()
        try:
            entry = link.call(kv.get(request_key(node_id)))
        except NotFoundError:
            return f"no promotion request for {node_id}: nothing to withdraw"
        try:
            request = untrusted.loads(entry.value, untrusted.MAX_REQUEST_BYTES, "the request")
        except untrusted.UnreadableValue:
            request = None
        status = request.get("status") if isinstance(request, dict) else None
        if status != "requested":
            return (f"the promotion request for {node_id} is not pending (its key holds "
                    f"{str(status)[:32] if isinstance(status, str) else 'something else'!r}): nothing to withdraw")
        assert isinstance(request, dict)
        epoch = bounded_int(request.get("epoch"))
        nonce = request.get("nonce") if isinstance(request.get("nonce"), str) else ""
        try:
            link.call(kv.update(request_key(node_id), _withdrawal(node_id, epoch, str(nonce)[:64], "`promote --withdraw`"),
                                last=int(entry.revision)))
        except KeyWrongLastSequenceError:
            raise PromotionRefused(f"standby {node_id} took or answered the request before it could be withdrawn: see "
                                   "`ringfence replication status` and its log", field="--node-id") from None
        return f"withdrew the pending promotion request of {node_id} (epoch {epoch}): no standby acts on it now"
    except nats_failures() as err:
        raise ConfigError(f"NATS at {target.display} failed while withdrawing the promotion request of {node_id}: "
                          f"{nats_failed(err)}", field="--nats") from None
    finally:
        link.close()


def _took_record(link: NatsLink, stream: str, peers: Mapping[str, Any] | None, node: str, epoch: int, nonce: str) -> bool:
    """Whether the leader key's history holds `node`'s verified record at `epoch` for the request with
    `nonce` (the standby names the request in the record it takes): the promotion happened, whatever
    someone wrote over the standby's answers (second intruder review, R1)."""
    return any(record.get("node") == node and record.get("epoch") == epoch and record.get("nonce") == nonce
               and verified_leader(record, stream, peers) is not None
               for record in _leader_records(link, hint=": the promotion's record is not looked for"))


def normalised_approvals(tokens: Sequence[str]) -> list[str]:
    """The approval tokens as a leader record and its grant keep them: each parsed and formatted again
    (`parse_approval`: ASCII, a staff id of the register's character set), so padding cannot swell a
    record past the 16 KiB a node reads (intruder review of session 16, F1). A token that does not parse
    refuses the request (`ValidationError`, naming it)."""
    from ..staff.decisions import format_approval, parse_approval

    return [format_approval(parse_approval(t, f"approvals[{i}]")) for i, t in enumerate(tokens)]


class PromotionRefused(RingfenceError, PermissionError):
    code = "RF_PROMOTION_REFUSED"
    http_status = 403
    default_message = "the promotion was refused"


GRANT_FORMAT = "ringfence-grant-v1"
OPENS = "opens"  # an opener's grant (`opener_grant`)
LEASE = "lease_ms"  # in a grant: the lease its epoch's leader runs with (0: none, no take-over from it)
#: A promotion's approvals must stay valid this long past the standby's clock and its sequencer time
#: when it takes the leader record (plus twice the lease): the fence lands after the old primary's
#: last batches, and the grant is checked again there, in their sequencer time (review of #21, 1)
PROMOTION_MARGIN_NS = 5 * 10**9


def fence_grant(record: Mapping[str, Any], lease_ms: int | None = None) -> bytes:
    """The body of the fence that opens the epoch of leader `record` (its grant, canonical JSON):
    `{"format", "epoch", "node"}` and either `approvals` (the operators' tokens the promotion
    carried) or `took_over_from` (a lease take-over). Every node checks it (`grant_refusal`).
    `lease_ms`: the lease the node opening the epoch runs with (its URL's), declared in the stream so
    that a later take-over from this epoch is judged by it, not by a reader's options of another day."""
    grant: dict[str, Any] = {"format": GRANT_FORMAT, "epoch": int(record["epoch"]), "node": record["node"]}
    if lease_ms is not None:
        grant[LEASE] = int(lease_ms)
    if "took_over_from" in record:
        grant["took_over_from"] = record["took_over_from"]
    else:
        grant["approvals"] = list(record.get("approvals") or [])
    return json.dumps(grant, sort_keys=True, separators=(",", ":")).encode()


def first_primary_of(target: ReplicationTarget, peers: Mapping[str, Any] | None) -> str:
    """The node that opens the stream (its message 1): `first_primary=NODE` in the URL, else the first
    node of the peers file; "" when neither is given (no peers file: in-process use only)."""
    return target.first_primary or next(iter(peers or {}), "")


def check_first_primary(target: ReplicationTarget, peers: Mapping[str, Any] | None, option: str) -> None:
    """`ConfigError` when `first_primary=NODE` names a node that is not in the peers file: no message of
    it could ever verify, so every standby would refuse the stream's first message."""
    if target.first_primary and peers is not None and target.first_primary not in peers:
        raise ConfigError(f"first_primary={target.first_primary} in the {option} URL is not a node of the peers file "
                          f"(the nodes: {', '.join(sorted(peers)) or 'none'}): name the node that opens the stream",
                          field="first_primary")


def first_primary_source(target: ReplicationTarget) -> str:
    return ("first_primary in this node's URL" if target.first_primary else
            "the first node of the peers file, as no first_primary=NODE is in this node's URL")


def opener_grant(epoch: int, node: str, lease_ms: int = 0) -> bytes:
    """The body of a stream's opener (`Replicator._open_stream`): a grant that opens the stream's first
    epoch, accepted only at stream sequence 1 and only from the stream's first primary. `lease_ms`: the
    first primary's lease (`fence_grant`)."""
    return json.dumps({"format": GRANT_FORMAT, "epoch": epoch, "node": node, OPENS: True, LEASE: int(lease_ms)},
                      sort_keys=True, separators=(",", ":")).encode()


def opens_stream(body: bytes) -> bool:
    """Whether a fence's body is an opener's grant (`opener_grant`)."""
    try:
        grant = untrusted.loads(body, untrusted.MAX_GRANT_BYTES, "its grant")
    except untrusted.UnreadableValue:
        return False
    return isinstance(grant, dict) and grant.get(OPENS) is True


def read_grant(body: bytes, node: str, epoch: int) -> tuple[dict[str, Any] | None, str]:
    """A fence's grant (its body) as (the grant, "") when it is a grant of this format for `node` at `epoch`,
    else (None, why not): the checks every grant passes, an opener's (`opener_grant`) and a promotion's."""
    try:
        grant = untrusted.loads(body, untrusted.MAX_GRANT_BYTES, "its grant")
    except untrusted.UnreadableValue as err:
        return None, str(err)
    if not isinstance(grant, dict) or grant.get("format") != GRANT_FORMAT:
        return None, f"its grant is not a JSON object with format {GRANT_FORMAT!r}"
    if grant.get("epoch") != epoch or grant.get("node") != node:
        return None, f"its grant is for node {grant.get('node')!r} at epoch {grant.get('epoch')!r}, not {node!r} at {epoch}"
    if LEASE in grant and (type(grant[LEASE]) is not int or bounded_int(grant[LEASE]) is None):
        return None, f"its grant's {LEASE} is not a whole number of at most 18 digits"
    return grant, ""


def declared_lease(body: bytes, node: str, epoch: int) -> int | None:
    """The lease a fence's grant declares for its epoch (`fence_grant`), or None: a grant of a version
    before session 16 (or no readable grant) declares none."""
    grant, _ = read_grant(body, node, epoch)
    return None if grant is None or LEASE not in grant else int(grant[LEASE])


#: why a promotion without the operators' quorum is refused outside dev mode in an exchange without staff
#: (intruder review of session 22, B4: any peer's node key opened the next epoch there)
STAFFLESS_REFUSED = ("this exchange has no staff operators registered, and outside dev mode (RINGFENCE_MODE=prod) an "
                     "epoch is opened only by the operators' quorum: without staff any peer's node key (with the rf-node "
                     "credential) would open it. Register staff first: stop the primary and run `ringfence staff init "
                     "--data DIR --member ID:operator --member ID:operator --out-dir KEYS` on its data folder, then "
                     "start it again (docs/resilience.md, 'A node key alone opens no epoch')")


#: dev mode's one line about the same (said once at start by a replicated node without staff)
STAFFLESS_DEV = ("no staff registered: any peer's node key can open an epoch; fine for a test, register staff "
                 "before production (`ringfence staff init`; docs/resilience.md, 'A node key alone opens no epoch')")


def has_staff_quorum(engine: Any) -> bool:
    """Whether `engine`'s staff register holds operators able to reach its operator quorum (at least
    2 active operators, as many as the quorum): the only thing that opens an epoch outside dev mode."""
    from ..staff.decisions import OPERATOR

    staff = engine.components.get("staff")
    return staff is not None and bool(staff.members) and 2 <= staff.quorum <= len(staff.active(OPERATOR))


def grant_refusal(engine: Any, stream: str, node: str, epoch: int, body: bytes, *, take_overs: bool,
                  staffless_ok: bool, lease_before: int | None = None, history: bool = False) -> str:
    """Why the fence of `node` opening `epoch` (its `body`, `fence_grant`) is not granted, or "" when
    it is: the operators' quorum over `[stream, node, epoch]` verified against the staff register of
    `engine` (the replica at the fence's position: registered, active operators, distinct people,
    valid signatures, unexpired in sequencer time); a lease take-over only where `take_overs` (the
    node's URL has lease_ms or auto_promote: it fails over on its own). A node key alone no longer
    opens an epoch (intruder review of #21, R1). No staff registered: no quorum to check; accepted
    only where `staffless_ok` (the node runs in dev mode: its settings say so, the caller passes it),
    refused otherwise (`STAFFLESS_REFUSED`; intruder review of session 22, B4).

    A take-over is judged by the lease the epoch it takes over declared in its own fence
    (`lease_before`, None when that fence declares none: a version before session 16): never from an
    epoch declared without a lease; and a take-over that was already in the stream when the reader
    started (`history`) from an epoch declared with one is accepted whatever the reader's options are
    today — the cluster failed over on its own then (docs/resilience.md, 'A take-over in the history')."""
    from ..staff.decisions import OPERATOR, parse_approval
    from ..staff.state import MAX_APPROVALS, check_quorum

    if not body:
        return ("it carries no grant (a fence of a ringfence before session 15, or of someone holding that node's key): "
                "upgrade every node before promoting; a standby built after the upgrade on such a stream starts from a "
                "backup of a node that applied past it (docs/resilience.md)")
    grant, reason = read_grant(body, node, epoch)
    if grant is None:
        return reason
    if "took_over_from" in grant:
        if lease_before == 0:
            return (f"it opens the epoch by a lease take-over from {grant['took_over_from']!r}, but the epoch it takes "
                    "over was opened without a lease (its fence declares lease_ms 0): only the operators' quorum "
                    "promotes a node there")
        if history and lease_before is not None:
            return ""  # the epoch taken over ran with a lease, declared in the stream: that day's rule, not today's
        if not take_overs:
            return (f"it opens the epoch by a lease take-over from {grant['took_over_from']!r}, and this node's URL has "
                    "neither lease_ms nor auto_promote (promotion by the operators' quorum only): give every node the "
                    "same lease options if the cluster is to fail over on its own")
        return ""
    tokens = grant.get("approvals")
    if not isinstance(tokens, list) or len(tokens) > MAX_APPROVALS or not all(isinstance(t, str) for t in tokens):
        return f"approvals: a list of at most {MAX_APPROVALS} approval tokens (STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE)"
    staff = engine.components.get("staff")
    if staff is None or not staff.members:  # no staff identities: nothing but a node key decided (B4)
        return "" if staffless_ok else STAFFLESS_REFUSED
    try:
        sigs = [parse_approval(t, f"approvals[{i}]") for i, t in enumerate(tokens)]
        check_quorum(engine, PROMOTE_ACTION, promote_subject(stream, node, epoch), sigs, OPERATOR, field="approvals")
    except RingfenceError as err:
        return f"the operators' approvals do not verify against this node's staff register: {err}"
    except (ValueError, TypeError, OverflowError) as err:  # junk a signer put in its grant: refused, never a crash (F6)
        return f"the operators' approvals are not readable ({type(err).__name__})"
    return ""


def _headers(kind: str, epoch: int, first_seq: int, count: int, prev_hash: bytes, record_hash: bytes,
             state_hash: str, expected: int) -> dict[str, str]:
    return {
        "Nats-Msg-Id": f"rf-e{epoch}-{kind}-{first_seq}",
        "Nats-Expected-Last-Sequence": str(expected),
        "Rf-Kind": kind,
        "Rf-Epoch": str(epoch),
        "Rf-First-Seq": str(first_seq),
        "Rf-Count": str(count),
        "Rf-Prev-Hash": prev_hash.hex(),
        "Rf-Hash": record_hash.hex(),
        "Rf-State-Hash": state_hash,
    }


class Replicator:
    """The primary's side: claims leadership, brings the stream up to its journal, then publishes
    every batch before it is acknowledged (`attach` installs it as the node's `replicate` hook).

    On a node with the classic group commit (not pipelined) the sequencer publishes each batch and
    reads the stream's ack on a connection of its own (`direct_publish`, `direct.DirectLink`): no
    other thread runs per batch for it. A pipelined node's batches go through the link's loop."""

    #: classic nodes: publish on the sequencer's own connection (False: through the link's loop)
    direct_publish = True
    #: classic nodes: take the state digest after a batch once it is answered, on the sequencer
    #: (`answered`); False: on the digest thread during the next batch's fsync, as before session 21
    digest_after_answer = True

    def __init__(self, target: ReplicationTarget, node_id: str, node_dir: Path | None = None, *, key: Any,
                 peers: Mapping[str, Any] | None = None, staffless_ok: bool = True) -> None:
        check_first_primary(target, peers, "--replicate")
        self.target = target
        self.node_id = node_id
        #: a promotion without staff operators counts as granted (dev mode: `serve` passes its settings' mode;
        #: the in-process default) or not (`grant_refusal`, intruder review of session 22, B4)
        self.staffless_ok = staffless_ok
        #: this node's Ed25519 key (`nodekey`): signs every message and the leader record
        self.key = key
        self._signer = FastSigner(key)  # the same signatures, cheaper: every message is signed on the NATS loop
        #: the peers file, if given: lets the primary tell a forged leader record naming another node
        self.peers = peers
        self._session = secrets.token_hex(8)  # `Rf-Session`: this publisher's run
        self._carried: dict[str, Any] = {}  # the claimed record's approvals, kept in each renewal
        #: the record's `renewal` counter: one more in each record written in an epoch (`lease_key`)
        self.renewal = 0
        #: the highest epoch this node saw or held (`node_dir/replication-epoch.json`; epochs.py)
        self.memory = EpochMemory(node_dir, target.stream)
        self.link = NatsLink(target)
        self.kv = self.link.ensure_stream_and_bucket()
        self.revision = 0
        self.node: Any = None
        self.lost: str | None = None
        #: why this primary stopped renewing its lease (`_release_lease`), None while it renews it
        self._lease_released: str | None = None
        self._stop = threading.Event()
        try:
            self.epoch = self._claim()
            info = self.link.call(self.link.js.stream_info(target.stream))
        except nats_failures() as err:
            raise self._unreachable(err, "while this node claimed the leadership") from None
        self.renewed_at = time.monotonic()
        #: the stream sequence of the newest message of ours the stream acknowledged
        self.stream_seq = int(info.state.last_seq)
        self.last_hash = b""
        self.published = 0  # records the stream acknowledged
        self._sequenced = 0  # records begun (sequencer thread): which batch a state hash is due on
        # Publishes are sent in order and may be in flight together (a pipelined node): each message
        # expects the stream's last sequence to be the one the message before it will take, and
        # while that one is unacknowledged also names its Nats-Msg-Id (`_apublish`).
        self._sent_seq = self.stream_seq  # the stream sequence the last message sent will take
        self._sent_id = ""  # its Nats-Msg-Id
        self._unacked = 0  # messages sent whose ack has not come back
        self._broken: BaseException | None = None  # a publish failed: nothing more is sent
        self._send_lock: asyncio.Lock | None = None  # created on the link's loop
        self._sending: set[asyncio.Task[None]] = set()  # `_publish_later`'s send tasks still running
        #: the stream's acks come to `_ack_prefix.N`; `_acks` maps that subject to its future. nats-py's
        #: own `publish_async` raises a refusal inside its reply handler instead of failing the
        #: future (2.16.0): the publisher would see a timeout 5 s later instead of "deposed".
        self._ack_prefix = ""
        self._acks: dict[str, asyncio.Future[Any]] = {}
        #: the checks waiting on those futures (`_await_acks`), called by the reply handler itself: no
        #: loop iteration between an ack's arrival and its batch's future
        self._on_ack: dict[str, Callable[[asyncio.Future[Any]], None]] = {}
        self._ack_count = 0
        self._hasher = _ForkedHasher() if target.state_hash_later else None
        #: the outcome digest of the last batch, sent on the next one: (headers) or {}
        self._outcome: dict[str, str] = {}
        #: time the sequencer thread spent on state hashes (hashing inline, or forking the hasher)
        self.hash_seconds = 0.0  # float-ok: a measurement, seconds
        self.hashes = 0
        #: time the sequencer thread spent on incremental state digests (`state_digest`)
        self.digest_seconds = 0.0  # float-ok: a measurement, seconds
        self.digests = 0
        self._digest_of = 0  # the last sequence of the batch whose state is to be digested (`begin`); 0: none
        #: the digest of the state after batch `_digest_of`, being taken on the digest thread while
        #: the next batch's record is written and fsynced (`begin` starts it, `written` waits for it)
        self._digest_job: tuple[int, concurrent.futures.Future[str]] | None = None
        #: a finished digest, sent with the next batch that begins: (sequence, digest)
        self._digest_ready: tuple[int, str] | None = None
        self._digest_pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: the classic sequencer's own blocking connection (`direct.DirectLink`), once attached to a
        #: node that does not pipeline; None: every batch goes through the link's loop
        self._direct: Any = None
        self._direct_count = 0  # reply subjects `{prefix}.N` of the direct connection
        self._own_from = self.stream_seq  # messages above this one are this node's (`_watch_stream`)
        threading.Thread(target=self._watch_loop, name="ringfence-stream-watch", daemon=True).start()
        if target.lease_ms:
            # renewed from the claim on, through a build that may take longer than the lease (intruder
            # review of session 15, F7): a standby must not take over a primary that is merely starting
            threading.Thread(target=self._lease_loop, name="ringfence-lease", daemon=True).start()
        else:
            self._restate()

    def _restate(self) -> None:
        """A primary without a lease writes its record at once with its own settings (lease_ms 0): a
        standby promoted by a take-over would otherwise leave the deposed primary's lease in it,
        unrenewed, for another standby to take over from a healthy node (intruder review of session 15,
        F5)."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            self.revision = int(self.link.call(self.kv.update("leader", self._record(), last=self.revision)))
        except KeyWrongLastSequenceError:
            self._stop.set()
            self.link.close()
            raise Fenced("the leadership record changed while this node claimed it: another node leads; start this "
                         "node with --standby", field="--replicate") from None
        except nats_failures() as err:
            raise self._unreachable(err, "while this node wrote its leader record") from None

    def _unreachable(self, err: BaseException, when: str) -> ConfigError:
        """A NATS call failed while this primary starts: the link is closed and the error said in one line."""
        self._stop.set()
        self.link.close()
        return ConfigError(f"NATS at {self.target.display} failed {when} (stream {self.target.stream}): "
                           f"{nats_failed(err)}; start this node again once NATS answers", field="--replicate")

    def _record(self) -> bytes:
        self.renewal += 1  # every value written is above the last: a replayed older one is known by it
        return sign_leader(self.key, self.target.stream, {
            **self._carried, "epoch": self.epoch, "node": self.node_id, "lease_ms": self.target.lease_ms,
            "renewed_at_ns": time.time_ns(), "renewal": self.renewal})

    def _forged(self, leader: Mapping[str, Any]) -> bool:
        """A leader record is forged when it does not carry the signature of the node it names (own
        key for this node; the peers file for another, when this primary was given one)."""
        node = leader.get("node")
        if leader.get("unreadable"):
            return True
        public = self.key.public_key() if node == self.node_id else (self.peers or {}).get(str(node))
        if public is None:  # another node's: not in the peers file (forged), or no peers file to check it with
            return self.peers is not None
        return not leader_signature_ok(leader, self.target.stream, public)

    def _claim(self) -> int:
        leader, revision = leader_of(self.link, self.kv)
        if leader is None and int(self.link.call(self.link.js.stream_info(self.target.stream)).state.last_seq):
            return self._reclaim()
        if leader is None:  # an empty stream: above every epoch seen (this node's memory) and remembered
            self.epoch = self._epoch_above(None)
            self.revision = int(self.link.call(self.kv.create("leader", self._record())))
            self.memory.see(self.epoch)
            return self.epoch
        if self._forged(leader):
            _log.critical("replication: forged leader record (node %r, epoch %r, unsigned or badly signed): "
                          "this node does not start", leader.get("node"), leader.get("epoch"))
            raise Fenced(f"forged leader record: it names {leader.get('node')!r} at epoch {leader.get('epoch')} but does not "
                         "carry that node's valid signature; this node refuses to start as the primary (someone with "
                         "write access to the leader bucket wrote it). The way out: promote a standby with `ringfence "
                         "replication promote` (it replaces the record with its own signed one at the next genuine "
                         "epoch), or start this node with --standby and promote it", field="--replicate")
        if leader["node"] != self.node_id:
            raise Fenced(f"node {leader['node']!r} is the primary at epoch {leader['epoch']}; start this node with "
                         "--standby, or promote it with `ringfence replication promote`", field="--replicate")
        self.epoch, self.revision = self._epoch_above(leader), revision
        self.memory.see(self.epoch)
        self.renewal = bounded_int(leader.get("renewal", 0)) or 0  # resumed: the next renewal counts on from it
        self._carried = {k: leader[k] for k in ("approved_by", "approvals", "took_over_from", "nonce") if k in leader}
        return self.epoch

    def _reclaim(self) -> int:
        """The leader record is missing (deleted or purged) but the stream holds messages: a new epoch would
        need a fence with a grant, which only a promotion or a take-over carries, so the standbys would refuse
        it ("no fence opened"; review of #21, 2). When the stream's newest message is this node's, signed, at
        the highest epoch anywhere, this node still leads that epoch: the record is written again at it (its
        renewal above every one the bucket still holds). Otherwise `Fenced`, saying what to do."""
        from .epochs import _epoch_of

        last = int(self.link.call(self.link.js.stream_info(self.target.stream)).state.last_seq)
        msg = self.link.call(self.link.js.get_msg(self.target.stream, last))
        epoch, signer = _epoch_of(msg, last, self.target.stream, self.peers), (msg.headers or {}).get("Rf-Node", "")
        try:
            if not epoch or signer != self.node_id:
                raise EpochBackwards(f"the stream's newest message ({last}) is {'of node ' + repr(signer) if epoch else 'not signed by a node of the peers file'}"
                                     f"{f' at epoch {epoch}' if epoch else ''}", field="epoch")
            self.epoch = epoch_above(self.link, self.memory, None, want=epoch, scan=True, held=True, peers=self.peers)
        except EpochBackwards as err:
            raise Fenced(f"the leader record of stream {self.target.stream} is missing (deleted or purged) and {err.message}: this "
                         "node does not take a new epoch without a fence that grants it (the standbys would refuse its "
                         "batches); promote a node with `ringfence replication promote` (the operators' quorum), which "
                         "writes a new leader record and opens its epoch with a fence", field="--replicate") from None
        renewals = [0]
        newer: tuple[int, str] | None = None  # a genuine record above this epoch: a promotion accepted since
        for old in _leader_records(self.link):
            if bounded_int(old.get("epoch")) is None or self._forged(old):
                continue
            if int(old["epoch"]) > self.epoch and (newer is None or int(old["epoch"]) > newer[0]):
                newer = (int(old["epoch"]), str(old.get("node"))[:64])
            if old.get("node") == self.node_id and old.get("epoch") == self.epoch:
                renewals.append(bounded_int(old.get("renewal")) or 0)
        if newer is not None:  # its fence may not be in the stream yet: taking this epoch back would undo it
            raise Fenced(f"the leader record of stream {self.target.stream} is missing (deleted or purged), and its history "
                         f"holds node {newer[1]!r}'s genuine record at epoch {newer[0]}, above this node's {self.epoch}: "
                         "a promotion was accepted after this node led; this node does not take its epoch back. See "
                         "`ringfence replication status`; promote a node with `ringfence replication promote` if none "
                         "leads (code review of session 16)", field="--replicate")
        # purged, no history left: a count no record of this epoch reached (its milliseconds since 1970)
        self.renewal = max(renewals) if len(renewals) > 1 else time.time_ns() // 10**6
        self.revision = int(self.link.call(self.kv.create("leader", self._record())))
        self.memory.see(self.epoch)
        _log.warning("replication: the leader record of stream %s was missing; written again at this node's epoch %d",
                     self.target.stream, self.epoch)
        return self.epoch

    def _epoch_above(self, leader: dict[str, Any] | None) -> int:
        """The first claim's epoch (`leader` None: the whole stream is read), or the held epoch of
        `leader` checked against everything seen; `Fenced` when it would go backwards."""
        try:
            return epoch_above(self.link, self.memory, leader, want=None if leader is None else int(leader["epoch"]),
                               scan=leader is None, held=leader is not None, peers=self.peers)
        except EpochBackwards as err:
            raise Fenced(str(err), field="--replicate") from None

    def _renew(self) -> None:
        """Renew the lease (revision-checked); a changed record means this node was deposed."""
        from nats.js.errors import KeyWrongLastSequenceError

        sent = time.monotonic()
        try:
            self.revision = int(self.link.call(self.kv.update("leader", self._record(), last=self.revision),
                                               self.target.lease_ms / 1000))
        except KeyWrongLastSequenceError:
            leader, revision = leader_of(self.link, self.kv)
            if leader is not None and self._forged(leader):
                self._fence_self(f"forged leader record (names {leader.get('node')!r} at epoch {leader.get('epoch')} "
                                 "without that node's valid signature): fencing this node, the safe side")
                return
            if leader is not None and leader["node"] == self.node_id and int(leader["epoch"]) == self.epoch:
                self.revision = revision  # our own renewal that timed out earlier landed late: still ours
                return
            reason = self._not_granted(leader) if leader is not None else ""
            if reason and leader is not None:  # still the safe side: the stream refuses this node's next batch once that node's fence is in
                self._fence_self(f"deposed at epoch {self.epoch} by a leader record naming {leader['node']!r} at epoch "
                                 f"{leader['epoch']} that the operators did not grant ({reason}): the standbys refuse its "
                                 "fence; check who holds that node's key")
                return
            self._fence_self(f"the leadership record changed: this node was deposed at epoch {self.epoch}")
            return
        except Exception as err:  # noqa: BLE001 - any failure to renew counts against the lease, checked below
            if time.monotonic() - self.renewed_at > self.target.lease_ms / 1000:
                self._fence_self(f"the lease of {self.target.lease_ms} ms expired: NATS unreachable ({type(err).__name__})")
            return
        self.renewed_at = sent

    def _not_granted(self, leader: Mapping[str, Any]) -> str:
        """Why the record that deposed this primary opens its epoch without a grant (`grant_refusal`,
        checked against this node's state), or ""."""
        node = self.node
        if node is None or self.peers is None:
            return ""
        grant = fence_grant(leader)
        take_overs = bool(self.target.lease_ms or self.target.auto_promote)
        try:
            return str(node.read(lambda engine: grant_refusal(engine, self.target.stream, str(leader["node"]),
                                                              int(leader["epoch"]), grant, take_overs=take_overs,
                                                              staffless_ok=self.staffless_ok)))
        except Exception as err:  # noqa: BLE001 - the reason is for the log; the node is fenced either way
            return f"not checked: {type(err).__name__}"

    def _fence_self(self, why: str) -> None:
        self.lost = why
        node = self.node
        if node is not None and node.failed is None:
            node.failed = Fenced(why)  # refused before journaling from now on
            _log.critical("replication: %s; this node stops acknowledging", why)

    def _stopped(self) -> str:
        """Why this primary is no longer a working one, or "": it lost the leadership (`lost`), its node
        stopped (`node.failed`: the lease expired before a batch was replicated, a publish or the
        journal failed, fenced), or a publish failed (`_broken`: nothing more is sent). Before `attach`
        (no node yet) a primary that is starting is a working one: its lease is renewed through the
        build (intruder review of session 15, F7)."""
        if self.lost is not None:
            return self.lost
        node = self.node
        failed = None if node is None else node.failed
        if failed is not None:
            return str(failed)[:300] if isinstance(failed, RingfenceError) else nats_failed(failed)  # for the log
        if self._broken is not None and node is not None:
            return f"a publish failed ({type(self._broken).__name__}): nothing more is sent"
        return ""

    def lease_state(self) -> str | None:
        """For /readyz: None without a lease; "renewing" while this primary renews it; else why not."""
        if not self.target.lease_ms:
            return None
        if self._lease_released is None and not self._stopped():  # (stopped: the lease loop renews no more)
            return "renewing"
        return (f"not renewed since this node stopped (why: `stopped`): it expires {self.target.lease_ms} ms after "
                "the last renewal, and a standby with auto_promote=1 takes over")

    def _release_lease(self, why: str) -> None:
        """This primary stopped: it renews its lease no more, so the lease runs out and an auto-promoting
        standby takes over (issue #21, a new user's check: a primary stopped by a lease that expired
        before a batch was replicated kept renewing, and the standby never took over). Said once."""
        if self._lease_released is not None:
            return
        self._lease_released = why
        if self.lost is None:
            self.lost = why  # the watch loop ends too; every later batch is refused (`_check_lease`)
        _log.critical("replication: this node stopped (%s): it no longer renews its lease of %d ms on stream %s (a "
                      "standby with auto_promote=1 takes over once it expires)", why, self.target.lease_ms,
                      self.target.stream)

    def _lease_loop(self) -> None:
        period = self.target.lease_ms / 3000
        while not self._stop.wait(period):
            why = self._stopped()
            if why:
                self._release_lease(why)
                return
            try:
                self._renew()
            except Exception as err:  # noqa: BLE001 - the loop must keep watching the lease; a failed renewal
                if time.monotonic() - self.renewed_at > self.target.lease_ms / 1000:
                    self._fence_self(f"the lease of {self.target.lease_ms} ms expired ({type(err).__name__})")

    def _watch_loop(self) -> None:
        """Every STREAM_CHECK_S, outside the publish path: `_watch_stream`."""
        while self.lost is None and not self._stop.wait(STREAM_CHECK_S):
            try:
                self._watch_stream()
            except Exception as err:  # noqa: BLE001 - NATS unreachable: the lease and the publishes say so
                _log.debug("replication: the stream check failed: %s", nats_failed(err))

    def _watch_stream(self) -> None:
        """Re-read the journal stream while leading: a configuration changed at run time (no_ack, limits,
        replicas...) or a tail that is not the message this node last had acknowledged (acks the stream
        did not give) fences this node (intruder review of session 16, F2: no_ack set at run time, the
        publishes dropped, forged acks answered in their place)."""
        seq = self.stream_seq
        info = self.link.call(self.link.js.stream_info(self.target.stream))
        try:
            _check_hardened(info.config, self.target)
            _check_stream(info.config, self.target)
        except ConfigError as err:
            self._watch_fence(f"the journal stream's configuration changed while this node leads ({err})")
            return
        if int(info.state.last_seq) < seq:
            self._watch_fence(f"the stream's last sequence is {info.state.last_seq}, below {seq}, the sequence of the "
                              "last message acknowledged to this node: acks the stream did not give")
            return
        if seq > self._own_from:
            headers = self.link.call(self.link.js.get_msg(self.target.stream, seq)).headers or {}
            if headers.get("Rf-Session") != self._session or headers.get("Rf-Pos") != str(seq):
                self._watch_fence(f"stream message {seq}, acknowledged to this node, is not the one it published there "
                                  "(an ack the stream did not give)")
                return
        last = int(info.state.last_seq)
        if last > max(seq, self._own_from):  # beyond this node's last ack: its own publishes in flight, or another's
            tail = self.link.call(self.link.js.get_msg(self.target.stream, last)).headers or {}
            if tail.get("Rf-Session") != self._session:
                # a standby promoted meanwhile: stop now, not at the next write (a new user's check of #21: a primary
                # without lease_ms stayed ready, and its first client got a timeout, -1007, instead of the 503)
                epoch = bounded_int(tail.get("Rf-Epoch", ""))
                what = (f"node {str(tail.get('Rf-Node', ''))[:64]!r}'s fence of epoch {epoch}"
                        if tail.get("Rf-Kind") == KIND_FENCE and epoch is not None else "a message this node did not write")
                self._watch_fence(f"deposed: stream message {last} is {what}, after this node's last at {seq} "
                                  f"(epoch {self.epoch})")

    def _watch_fence(self, why: str) -> None:
        if self.lost is None and (self.node is None or self.node.failed is not None):  # else _fence_self says it
            _log.critical("replication: %s; this node stops acknowledging", why)
        self._fence_self(why)

    def _stream_tail(self) -> tuple[int, bytes]:
        """(last journal sequence, record hash) the stream holds from batches (0, genesis when none)."""
        from ..journal.journal import GENESIS_HASH

        seq = self.stream_seq
        while seq > 0:
            msg = self.link.call(self.link.js.get_msg(self.target.stream, seq))
            h = msg.headers or {}
            index, _, total = h.get("Rf-Chunk", "1/1").partition("/")
            if h.get("Rf-Kind") == KIND_BATCH and index == total:  # a record's last chunk: it is complete
                first, count, digest = bounded_int(h.get("Rf-First-Seq")), bounded_int(h.get("Rf-Count")), h.get("Rf-Hash", "")
                try:
                    record_hash = bytes.fromhex(digest) if len(digest) == 64 else b""
                except ValueError:
                    record_hash = b""
                if first is None or not count or not record_hash:  # anyone may publish on the subject: not a crash
                    raise Fenced(f"stream message {seq} is not a batch any node wrote (no valid Rf-First-Seq, Rf-Count, "
                                 "Rf-Hash): a standby refuses it too; move to a new stream name (docs/resilience.md)",
                                 field="--replicate")
                return first + count - 1, record_hash
            seq -= 1
        return 0, GENESIS_HASH

    def attach(self, node: Any) -> int:
        """Publish the local journal's records the stream lacks, then hook every new batch. Returns
        how many records were published to catch up. A NATS call that fails meanwhile: `ConfigError`."""
        try:
            return self._attach(node)
        except nats_failures() as err:
            raise self._unreachable(err, "while this node brought the stream up to its journal") from None

    def _attach(self, node: Any) -> int:
        from ..journal.journal import scan

        tail_seq, tail_hash = self._stream_tail()
        if tail_seq > node.last_seq:
            self._check_behind(node)
            raise Fenced(f"the stream holds sequence {tail_seq} but this node's journal ends at {node.last_seq}: "
                         "another primary wrote after it; start it with --standby", field="--replicate")
        if self.stream_seq == 0:
            self._open_stream()
        caught_up = 0
        state_hash = node.read(lambda engine: engine.state_hash())
        prev = None
        for record in scan(node.data_dir / "journal"):
            if record.first_seq <= tail_seq < record.last_seq:  # the stream's last record ends inside one of ours
                raise Fenced(self._not_ours(tail_seq, f"its last record ends at sequence {tail_seq}, inside this node's "
                                            f"record {record.first_seq}..{record.last_seq}"), field="--replicate")
            if record.last_seq <= tail_seq:
                if record.last_seq == tail_seq and record.hash != tail_hash:
                    raise Fenced(self._not_ours(tail_seq, f"its record ending at sequence {tail_seq} has another hash "
                                                "than this node's"), field="--replicate")
                prev = record.hash
                continue
            from ..journal.journal import GENESIS_HASH

            last = record.last_seq == node.last_seq
            self._publish(KIND_BATCH, record.first_seq, record.count, prev or GENESIS_HASH, record.hash,
                          record.payload, state_hash if last else "", {"Rf-Catch-Up": "1"})
            prev = record.hash
            caught_up += 1
        self.last_hash = prev or tail_hash
        self._sequenced = self.published
        self.node = node  # from now on a lease lost (`_fence_self`) marks the node failed
        if self.target.state_digest:  # the first digest computes everything: pay it now, not on a batch
            node.read(lambda engine: engine.state_digest())
        if self.lost is not None:  # the lease loop (running since the claim) lost the leadership meanwhile
            if node.failed is None:
                node.failed = Fenced(self.lost)
            raise Fenced(self.lost, field="--replicate")
        if self.direct_publish and not getattr(node, "pipeline", False):
            self._direct = self.link.direct(f"ringfence-{self.node_id}-sequencer")
        node.replica = self
        return caught_up

    def _open_stream(self) -> None:
        """An empty stream: publish its opener first, a fence of this node's epoch whose grant says it opens
        the stream (`OPENS`), so that the stream's message 1 is always the first primary's, even when a
        standby takes over before the first batch (review of session 15: the take-over's fence would
        otherwise be message 1, signed by another node than the first primary, and every later standby
        would refuse the stream). Only the stream's first primary opens it (`first_primary=NODE` in this
        node's URL, else the first node of its peers file): a misconfigured primary is told here, not
        every standby later."""
        from ..journal.journal import GENESIS_HASH

        first = first_primary_of(self.target, self.peers)
        if first and first != self.node_id:
            raise ConfigError(f"stream {self.target.stream} is empty and this node ({self.node_id!r}) is not its first "
                              f"primary ({first!r}: {first_primary_source(self.target)}), so the standbys would refuse "
                              f"its first message: start {first!r} as the primary, or, if {self.node_id!r} is to open "
                              f"this stream, put first_primary={self.node_id} in the URL of every node",
                              field="first_primary")
        body = opener_grant(self.epoch, self.node_id, self.target.lease_ms)
        headers = _headers(KIND_FENCE, self.epoch, 1, 0, GENESIS_HASH, GENESIS_HASH, "", 0)
        headers["Nats-Msg-Id"] += f"-open-{self._session}"
        seq = self._publish_one(0, headers, body)
        self.stream_seq = self._sent_seq = seq

    def _check_behind(self, node: Any) -> None:
        """The stream goes past this node's journal: find the stream's record of the journal's last sequence
        (a binary search on `Rf-First-Seq`, which never decreases along the stream) and raise `Fenced`
        when it is not this node's last record (intruder review of session 15, F2). Returns when it is (another primary wrote
        after it), or when the stream cannot tell (a message without valid headers)."""
        from ..journal.journal import scan

        want = node.last_seq
        if want == 0:
            return  # an empty journal is everybody's beginning

        def header(seq: int) -> tuple[int | None, Mapping[str, str]]:
            h = self.link.call(self.link.js.get_msg(self.target.stream, seq)).headers or {}
            return bounded_int(h.get("Rf-First-Seq")), h

        low, high = 1, self.stream_seq  # the last message whose record starts at or before `want`
        while low < high:
            mid = (low + high + 1) // 2
            first, _ = header(mid)
            if first is None:
                return
            if first <= want:
                low = mid
            else:
                high = mid - 1
        for seq in range(low, max(0, low - 64), -1):  # back to that record's last chunk (a fence carries no record)
            first, h = header(seq)
            index, _, total = h.get("Rf-Chunk", "1/1").partition("/")
            if h.get("Rf-Kind") != KIND_BATCH or index != total:
                continue
            count, digest = bounded_int(h.get("Rf-Count")), h.get("Rf-Hash", "")
            if first is None or not count or first > want:
                return
            mine = None
            for record in scan(node.data_dir / "journal", decode_from_seq=2**62):
                mine = record
            if first + count - 1 != want or mine is None or mine.hash.hex() != digest:
                _log.critical("replication: stream %s differs from this node's journal at sequence %d",
                              self.target.stream, want)
                raise Fenced(f"the stream goes past this node's journal (sequence {want}) and its record there (stream "
                             f"message {seq}, sequences {first}..{first + count - 1}) is not this node's last record: "
                             "the histories differ (this node's last batches were never replicated — a deposed primary "
                             "— or another node opened the stream). Never serve this folder as the primary: rejoin as "
                             "a standby on a fresh folder (docs/resilience.md)", field="--replicate")
            return

    def _not_ours(self, seq: int, how: str) -> str:
        """The refusal of a primary whose journal is not the stream's history (intruder review of session
        15, F2: a stream someone else opened first, with a stolen node key on a new stream name)."""
        _log.critical("replication: stream %s is not this node's history (%s): this node does not publish to it",
                      self.target.stream, how)
        return (f"stream {self.target.stream} does not hold this node's history: {how} (the hash chains differ up to "
                f"sequence {seq}); another node wrote to it first, and every standby would refuse this node's batches "
                "after that history. Do not serve on it: find out who wrote it, then move to a new stream name (an "
                "empty one), or, if the stream's history is the one to keep, rebuild this node from it as a standby "
                "(docs/resilience.md)")

    def _check_lease(self, first_seq: int) -> None:
        if self.lost is not None:
            raise Fenced(self.lost)
        if self.target.lease_ms and time.monotonic() - self.renewed_at > self.target.lease_ms / 1000:
            raise Fenced(f"the lease of {self.target.lease_ms} ms expired before batch {first_seq} was replicated")

    def begin(self, first_seq: int, count: int, payload: bytes, record_hash: bytes) -> Any:
        """`ReplicaLog.begin` (sequencer thread, before the local fsync). A batch that carries no
        state hash starts publishing now, while the fsync runs; one that carries it waits for
        `finish` (the hash is of the state after the batch is applied)."""
        self._check_lease(first_seq)
        prev, self.last_hash = self.last_hash, record_hash
        outcome, self._outcome = self._outcome, {}
        ready, self._digest_ready = self._digest_ready, None
        if ready is not None:  # the state digest after an earlier batch (taken during this one's predecessor's fsync)
            outcome["Rf-State-Digest-Of"], outcome["Rf-State-Digest"] = str(ready[0]), ready[1]
            outcome["Rf-Digest-Format"] = STATE_DIGEST_FORMAT
        self._sequenced += 1
        due = self._sequenced % self.target.state_hash_every == 0
        if due and not self.target.state_hash_later:
            token: Any = (first_seq, count, payload, record_hash, prev, outcome)
        else:
            extra = dict(outcome, **(self._hasher.ready() if self._hasher is not None else {}))
            if due and self._hasher is not None and self._hasher.idle():
                extra["Rf-State-Pending"] = "1"  # this batch's state hash comes in a later batch
            if self._direct_usable():  # sent now, on this thread; `finish` reads the ack
                future: Any = self._direct_send(KIND_BATCH, first_seq, count, prev, record_hash, payload, "", extra)
            else:
                future = self._publish_later(KIND_BATCH, first_seq, count, prev, record_hash, payload, "", extra)
                future.rf_last_seq = first_seq + count - 1  # for the outcome digest
            token = _Later(future, first_seq + count - 1) if "Rf-State-Pending" in extra else future
        if self._digest_of:  # the state is still the one after batch `_digest_of`, until `written`
            if self._digest_pool is None:
                self._digest_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ringfence-digest")
            self._digest_job = (self._digest_of, self._digest_pool.submit(self._digest_now))
            self._digest_of = 0
        return token

    def written(self, token: Any) -> None:
        """`ReplicaLog.written`: the batch's record is written (and, on the classic path, fsynced)
        and it is about to be applied. Waits for the state digest `begin` started: it read the
        state the apply is about to change, on the digest thread, while the sequencer waited for
        the disk. The digest goes out with the next batch that begins. Never raises: a digest that
        failed is not sent (the follower then checks nothing for that batch) and is logged."""
        job, self._digest_job = self._digest_job, None
        if job is None:
            return
        try:
            self._digest_ready = (job[0], job[1].result())
        except Exception as err:  # noqa: BLE001 - a broken engine is reported by its apply, not here
            _log.error("state digest after sequence %d not taken: %s", job[0], err)

    def _start_hasher(self, engine: Any, last_seq: int) -> None:
        """The state after the batch ending at `last_seq`, hashed by a forked child (`state_hash_later`)."""
        assert self._hasher is not None
        started = time.perf_counter()
        self._hasher.start(engine, last_seq)
        self.hash_seconds += time.perf_counter() - started
        self.hashes += 1

    def _inline_state_hash(self, first_seq: int, engine: Any) -> str:
        """The state hash a batch whose hash is inline carries, taken once the lease is checked for it
        (`finish` on the direct connection, `finish_later` on the link's path)."""
        self._check_lease(first_seq)
        started = time.perf_counter()
        state_hash = _hash_without_gc(engine)
        self.hash_seconds += time.perf_counter() - started
        self.hashes += 1
        return state_hash

    def finish(self, token: Any, engine: Any, outputs: list[list[Any]]) -> None:
        """`ReplicaLog.finish` (classic group commit: after apply, before any acknowledgement):
        returns once JetStream has stored the whole batch. The batch's outcome digest goes out with
        the next batch, and so does the state digest after it, taken here, on this thread, while the
        stream's ack is on its way (`_digest_inline`). On the direct connection the ack is read
        here too (`_direct_wait`)."""
        if self._direct is None or (isinstance(token, tuple) and not self._direct_usable()):
            self.finish_later(token, engine, outputs).result(PUBLISH_TIMEOUT_S + 1)
            return
        if isinstance(token, tuple):  # the state hash inline: the batch is sent only now
            first_seq, count, payload, record_hash, prev, outcome = token
            state_hash = self._inline_state_hash(first_seq, engine)
            sent = self._direct_send(KIND_BATCH, first_seq, count, prev, record_hash, payload, state_hash, outcome)
        else:
            sent = token.future if isinstance(token, _Later) else token
        self._outcome = self._checks_of(sent.last_seq, engine, outputs)
        if isinstance(token, _Later):
            self._start_hasher(engine, token.last_seq)
        self._direct_wait(sent)
        if self.target.lease_ms and time.monotonic() - self.renewed_at > self.target.lease_ms / 1000:
            raise Fenced(f"the lease of {self.target.lease_ms} ms expired while the batch was being replicated")

    def answered(self) -> None:
        """`ReplicaLog.answered` (classic group commit): the batch's commands are answered; the
        state digest after it is taken now, on the sequencer, before the next batch is taken (so
        no client of this batch waits for it, and requests arriving meanwhile join the next
        batch), and sent with the next batch. It was taken on a digest thread during the next
        batch's fsync: two thread hand-offs per batch, and on a loaded two-core machine the
        sequencer waited for that thread to be scheduled (3.7 ms at p50 behind the tail's
        requests, session 21). A node that does not call this gets the digest thread as before
        (`begin` starts it when a digest is still due). Never raises."""
        if self.digest_after_answer:
            self._digest_inline()

    def _digest_inline(self) -> None:
        """The state digest due (`_digest_of`), taken on this thread; a failure is logged, not
        raised, as in `written`: a digest that failed is not sent."""
        seq, self._digest_of = self._digest_of, 0
        if not seq:
            return
        try:
            self._digest_ready = (seq, self._digest_now())
        except Exception as err:  # noqa: BLE001 - a broken engine is reported by its apply, not here
            _log.error("state digest after sequence %d not taken: %s", seq, err)

    def _direct_usable(self) -> bool:
        """Whether the batch about to be sent goes on the direct connection. With nothing in flight
        and no earlier failure, the connection is made ready first (`DirectLink.ready`: the PINGs of
        an idle spell answered, a connection the server closed opened again). One that cannot be
        opened again is dropped, logged, and the link's path serves this batch and every later one:
        nothing was sent on it, and the link's nats-py client may well be up (it reconnects to the
        other servers of a NATS cluster, which this connection does not know), so the node goes on
        rather than stop. (A link closed too, a partition, fails the batch as before.)"""
        direct = self._direct
        if direct is None:
            return False
        if self._broken is not None or self._unacked:
            return True  # `_direct_send` reports the earlier failure
        try:
            direct.ready()
        except (OSError, ValueError) as err:  # a DirectError, an ssl error, a timeout: all OSErrors
            if direct.dead:
                return True  # the link is closed: the batch fails (`_direct_send`: not connected)
            _log.warning("replication: the direct publish connection to %s could not be opened again (%s); "
                         "batches go through the link's loop from now on", self.target.display, nats_failed(err))
            direct.close()
            self._direct = None
            return False
        return True

    def _direct_send(self, kind: str, first_seq: int, count: int, prev: bytes, record_hash: bytes, payload: bytes,
                     state_hash: str, extra: dict[str, str] | None) -> "_Sent":
        """`_send_chunks` on the sequencer's own connection: each chunk signed and written to the
        socket in order, with the same expectations (last sequence, last message id while one is
        unacknowledged). Never raises: a failure is kept in the returned `_Sent` and raised by
        `_direct_wait` (after the local write, as the loop's path reports it: outcome unknown),
        and stops every later publish (`_broken`)."""
        sent = _Sent(first_seq, first_seq + count - 1, time.monotonic())
        direct = self._direct
        try:
            if self._broken is not None:
                raise Fenced(f"batch {first_seq} not published: an earlier publish failed ({self._broken})")
            limit = min(self.link.chunk_bytes, max(64 * 1024, direct.max_payload - 64 * 1024))
            chunks = [payload[i : i + limit] for i in range(0, len(payload), limit)] or [b""]
            for index, chunk in enumerate(chunks, 1):
                expected = self._sent_seq
                headers = _headers(kind, self.epoch, first_seq, count, prev, record_hash, state_hash, expected)
                if index == len(chunks):
                    headers.update(extra or {})
                    if kind == KIND_BATCH and not state_hash and not (extra and ("Rf-State-Pending" in extra
                                                                                  or "Rf-Catch-Up" in extra)):
                        headers["Rf-Outcome-Next"] = "1"
                if len(chunks) > 1:
                    headers["Rf-Chunk"] = f"{index}/{len(chunks)}"
                headers["Nats-Msg-Id"] += f"-c{index}-x{expected}"
                if self._unacked:
                    headers["Nats-Expected-Last-Msg-Id"] = self._sent_id
                self._sign(headers, chunk, expected + 1)
                self._direct_count += 1
                reply = f"{direct.prefix}.{self._direct_count}"
                headers["Nats-Expected-Stream"] = self.target.stream  # (after signing, as `_send` adds it)
                direct.publish(self.target.subject, reply, headers, chunk)
                self._sent_seq, self._sent_id = expected + 1, headers["Nats-Msg-Id"]
                self._unacked += 1
                sent.sent.append((expected + 1, reply))
        except BaseException as err:  # noqa: BLE001 - raised by `_direct_wait`
            if self._broken is None:
                self._broken = err
            sent.error = err
        return sent

    def _direct_wait(self, sent: "_Sent") -> None:
        """Read the stream's ack of each of `sent`'s messages from the direct connection, within
        PUBLISH_TIMEOUT_S of the send, each checked by `_stored`; raises the first failure (and
        nothing more is sent after it)."""
        if sent.error is not None:
            raise sent.error
        deadline = sent.at + PUBLISH_TIMEOUT_S
        try:
            for want, reply in sent.sent:
                while True:
                    try:
                        answer = self._direct.reply(deadline)
                    except TimeoutError:
                        raise TimeoutError(f"no ack from JetStream for batch {sent.first_seq} within "
                                           f"{PUBLISH_TIMEOUT_S} s") from None
                    if answer.subject == reply:
                        break  # (another subject: a late reply to a publish that failed before; dropped)
                self._unacked -= 1
                self._stored(sent.first_seq, want, answer)
        except BaseException as err:
            sent.error = err
            if self._broken is None:
                self._broken = err
            self._unacked = 0  # nothing more is sent, nor waited for
            raise
        self.published += 1

    def finish_later(self, token: Any, engine: Any, outputs: list[list[Any]]) -> "concurrent.futures.Future[None]":
        """`ReplicaLog.finish_later` (pipelined node: after apply, on the sequencer thread, before
        the next batch is applied): takes what needs the engine at this batch's state — the outcome
        digest, an inline state hash (and only then starts the publish), the forked hasher — and
        returns at once a future that completes once JetStream has stored the whole batch and the
        lease still held then, or fails (`Fenced`, a timeout) if not. The state digest after this
        batch is taken when the next batch begins: the state is unchanged until it is applied."""
        if isinstance(token, tuple):
            first_seq, count, payload, record_hash, prev, outcome = token
            state_hash = self._inline_state_hash(first_seq, engine)
            published = self._publish_later(KIND_BATCH, first_seq, count, prev, record_hash, payload, state_hash, outcome)
            self._outcome = self._checks_of(first_seq + count - 1, engine, outputs)
            return self._lease_checked(published)
        if isinstance(token, (_Later, concurrent.futures.Future)):
            last_seq = token.last_seq if isinstance(token, _Later) else getattr(token, "rf_last_seq", 0)
            if last_seq:
                self._outcome = self._checks_of(last_seq, engine, outputs)
        if isinstance(token, _Later):
            self._start_hasher(engine, token.last_seq)
            token = token.future
        return self._lease_checked(token)

    def _lease_checked(self, published: "concurrent.futures.Future[None]") -> "concurrent.futures.Future[None]":
        """`published`, failed with `Fenced` if the lease ran out before the stream's ack came back."""
        if not self.target.lease_ms:
            return published
        checked: concurrent.futures.Future[None] = concurrent.futures.Future()

        def check(done: "concurrent.futures.Future[None]") -> None:
            err = done.exception()
            if err is None and time.monotonic() - self.renewed_at > self.target.lease_ms / 1000:
                err = Fenced(f"the lease of {self.target.lease_ms} ms expired while the batch was being replicated")
            if err is None:
                checked.set_result(None)
            else:
                checked.set_exception(err)

        published.add_done_callback(check)
        return checked

    def _checks_of(self, last_seq: int, engine: Any, outputs: list[list[Any]]) -> dict[str, str]:
        """What the next batch carries about this one: its outcome digest. With `state_digest=1`
        the engine's incremental state digest after it (`Engine.state_digest`: it costs in
        proportion to what the batch changed, so every batch's state is checked without hashing
        the whole state) is taken too, off the acknowledgement path. Classic group commit (since
        session 21): once this batch is answered (`answered`), on the sequencer, and the next
        batch carries it. Pipelined (or a node that does not call `answered`): the next `begin`
        starts it on the digest thread once that batch's publish is under way, the sequencer
        waits for it in `written`, after that batch's record is written and before it is applied
        (the state is unchanged until then), and the batch after that carries it
        (`Rf-State-Digest-Of`, `Rf-State-Digest`); a divergence is then reported one batch later."""
        self._digest_of = last_seq if self.target.state_digest else 0
        return {"Rf-Outcome-Of": str(last_seq), "Rf-Outcome": outcome_digest(outputs)}

    def _digest_now(self) -> str:
        """`Engine.state_digest` of the node's engine, between two batches' applies (the digest
        thread, while the sequencer writes and fsyncs the next batch's record)."""
        started = time.perf_counter()
        digest = str(self.node.engine.state_digest())
        self.digest_seconds += time.perf_counter() - started
        self.digests += 1
        return digest

    def settle(self, token: Any) -> None:
        """`ReplicaLog.settle`: the local write failed after `begin`; let a started publish finish
        (it may well succeed: that is why the client hears "outcome unknown")."""
        self.written(token)  # nothing is applied meanwhile: the digest thread must be done first
        if isinstance(token, _Later):
            token = token.future
        if isinstance(token, _Sent):
            try:
                self._direct_wait(token)
            except BaseException:  # noqa: BLE001 - stored or not, the node stops; the outcome stays unknown
                pass
        if isinstance(token, concurrent.futures.Future):
            try:
                token.result(PUBLISH_TIMEOUT_S)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - stored or not, the node stops; the outcome stays unknown
                pass

    def _publish(self, kind: str, first_seq: int, count: int, prev: bytes, record_hash: bytes, payload: bytes,
                 state_hash: str, extra: dict[str, str] | None = None) -> None:
        self.link.call(self._apublish(kind, first_seq, count, prev, record_hash, payload, state_hash, extra))

    def _sign(self, headers: dict[str, str], body: bytes, position: int) -> None:
        """Sign one message that must be stored at stream sequence `position` (module docstring)."""
        headers["Rf-Pos"] = str(position)
        headers["Rf-Session"] = self._session
        sign_message(self._signer, self.node_id, self.target.stream, headers, body)

    async def _apublish(self, kind: str, first_seq: int, count: int, prev: bytes, record_hash: bytes, payload: bytes,
                        state_hash: str, extra: dict[str, str] | None = None) -> None:
        """Publish one record and return once the stream stored all of it (`_send_record`)."""
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._send_record(_settler(stored), kind, first_seq, count, prev, record_hash, payload, state_hash, extra)
        await stored

    def _publish_later(self, kind: str, first_seq: int, count: int, prev: bytes, record_hash: bytes, payload: bytes,
                       state_hash: str, extra: dict[str, str] | None = None) -> "concurrent.futures.Future[None]":
        """Start publishing one record from the sequencer thread; the future completes once the stream
        stored all of it, or fails. One hop onto the link's loop (a plain callback that starts the send
        task) and no task waiting for the acks: the stream's replies complete the future from the ack
        subscription's handler (`_send_record`), three loop iterations fewer per batch than a coroutine
        run with `run_coroutine_threadsafe` that awaits each ack. (Sending from the callback itself, an
        eager start by hand, saved one more iteration — under 2 % of the thread's instructions — and
        broke on Python 3.12, which refuses generator-based coroutines as tasks: reverted, session 19.)"""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        settle = _settler(done)
        loop = self.link._loop

        def start() -> None:
            task = loop.create_task(self._send_record(settle, kind, first_seq, count, prev, record_hash, payload,
                                                      state_hash, extra))
            self._sending.add(task)  # (a reference until it ends: the loop keeps only a weak one)
            task.add_done_callback(self._sending.discard)

        loop.call_soon_threadsafe(start)
        return done

    async def _send_record(self, settle: Callable[[BaseException | None], None], kind: str, first_seq: int, count: int,
                           prev: bytes, record_hash: bytes, payload: bytes, state_hash: str,
                           extra: dict[str, str] | None = None) -> None:
        """Send one record; one larger than the server's max payload goes as numbered chunks
        (`Rf-Chunk: i/n`), each with its expected-last-sequence, the record complete with chunk n.
        `settle(None)` once the stream acknowledged every chunk (each ack checked by `_stored`),
        `settle(err)` at the first failure: a send that failed, a refusal, a forged ack, no ack
        within PUBLISH_TIMEOUT_S. Never raises.

        Records are sent in the order the sequencer started them (one sender at a time) and several
        may be in flight. Each message expects the stream's last sequence to be the one the message
        before it takes; while that one is still unacknowledged it also expects the stream's last
        message to *be* it (`Nats-Expected-Last-Msg-Id`). Without that, a message behind one that
        the stream refused — a promoted standby's fence took its place — would match the fence's
        sequence and be stored after the fence. After any failure nothing more is sent."""
        try:
            sent = await self._send_chunks(kind, first_seq, count, prev, record_hash, payload, state_hash, extra)
        except BaseException as err:  # noqa: BLE001 - handed to the record's waiter
            settle(err)
            return
        self._await_acks(settle, first_seq, sent)

    async def _send_chunks(self, kind: str, first_seq: int, count: int, prev: bytes, record_hash: bytes, payload: bytes,
                           state_hash: str, extra: dict[str, str] | None) -> list[tuple[int, "asyncio.Future[Any]"]]:
        """Send a record's messages (under the send lock); returns each one's (stream sequence, ack future)."""
        limit = self.link.chunk_bytes
        chunks = [payload[i : i + limit] for i in range(0, len(payload), limit)] or [b""]
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        sent: list[tuple[int, asyncio.Future[Any]]] = []
        async with self._send_lock:
            if self._broken is not None:
                raise Fenced(f"batch {first_seq} not published: an earlier publish failed ({self._broken})")
            for index, chunk in enumerate(chunks, 1):
                expected = self._sent_seq
                headers = _headers(kind, self.epoch, first_seq, count, prev, record_hash, state_hash, expected)
                if index == len(chunks):  # on the chunk that completes the record
                    headers.update(extra or {})
                    if kind == KIND_BATCH and not state_hash and not (extra and ("Rf-State-Pending" in extra
                                                                                  or "Rf-Catch-Up" in extra)):
                        headers["Rf-Outcome-Next"] = "1"  # its state check: the outcome digest on the next batch
                if len(chunks) > 1:
                    headers["Rf-Chunk"] = f"{index}/{len(chunks)}"
                headers["Nats-Msg-Id"] += f"-c{index}-x{expected}"  # a retry of this very publish is stored once
                if self._unacked:
                    headers["Nats-Expected-Last-Msg-Id"] = self._sent_id
                try:
                    self._sign(headers, chunk, expected + 1)  # (a signer that fails after chunk 1 went: nothing more)
                    ack = await self._send(chunk, headers)
                except BaseException as err:
                    self._broken = err
                    raise
                self._sent_seq, self._sent_id = expected + 1, headers["Nats-Msg-Id"]
                self._unacked += 1
                sent.append((expected + 1, ack))
        return sent

    def _await_acks(self, settle: Callable[[BaseException | None], None], first_seq: int,
                    sent: list[tuple[int, "asyncio.Future[Any]"]]) -> None:
        """Check each sent message's ack as it arrives, on the loop thread (called by the ack
        subscription's handler for `_send`'s own futures, else a done callback on the future), each
        within PUBLISH_TIMEOUT_S of now; settle the record once all are stored, or at the first
        failure (which also stops all later sends: `_broken`)."""
        loop = self.link._loop  # the running one
        waiting = {want for want, _ in sent}
        timers: dict[int, asyncio.TimerHandle] = {}
        failed: list[BaseException] = []

        def acked(want: int, pending: "asyncio.Future[Any]") -> None:
            if want not in waiting:  # already timed out, or answered
                return
            waiting.discard(want)
            timers.pop(want).cancel()
            self._unacked -= 1
            if failed:
                return
            try:
                if pending.cancelled():
                    raise asyncio.TimeoutError(f"no ack from JetStream for batch {first_seq} within {PUBLISH_TIMEOUT_S} s")
                err = pending.exception()
                if err is not None:
                    raise err
                self._stored(first_seq, want, pending.result())
            except BaseException as err:  # noqa: BLE001 - the record's failure, and no more sends
                failed.append(err)
                self._broken = err
                settle(err)
                return
            if not waiting:
                self.published += 1
                settle(None)

        def expire(want: int, pending: "asyncio.Future[Any]") -> None:
            if want not in waiting:
                return
            pending.cancel()  # as asyncio.wait_for did (no-op if it is done)
            reply = getattr(pending, "reply", "")
            self._acks.pop(reply, None)
            self._on_ack.pop(reply, None)
            acked(want, pending)  # reports the timeout

        for want, pending in sent:
            timers[want] = loop.call_later(PUBLISH_TIMEOUT_S, expire, want, pending)
            check = functools.partial(acked, want)
            reply = getattr(pending, "reply", "")
            if isinstance(pending, _Ack) and not pending.done() and self._acks.get(reply) is pending:
                self._on_ack[reply] = check  # `_send`'s own future: its reply handler calls the check at once
            else:
                pending.add_done_callback(check)  # one given by a wrapper of `_send`, or already answered

    async def _send(self, data: bytes, headers: dict[str, str]) -> "asyncio.Future[Any]":
        """Send one message to the stream; returns the future of the stream's reply (its ack)."""
        if not self._ack_prefix:
            prefix = self.link.nc.new_inbox()

            async def on_reply(msg: Any) -> None:
                waiting = self._acks.pop(msg.subject, None)
                check = self._on_ack.pop(msg.subject, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(msg)
                    if check is not None:
                        check(waiting)

            await self.link.nc.subscribe(f"{prefix}.*", cb=on_reply)
            self._ack_prefix = prefix
        self._ack_count += 1
        reply = f"{self._ack_prefix}.{self._ack_count}"
        waiting = _Ack(reply, loop=self.link._loop)  # (asyncio.get_running_loop() costs a getpid() call)
        self._acks[reply] = waiting  # taken out by the reply, or by its timeout (`_await_acks`)
        await self.link.nc.publish(self.target.subject, data, reply=reply,
                                   headers=dict(headers, **{"Nats-Expected-Stream": self.target.stream}))
        return waiting

    def _stored(self, first_seq: int, want: int, reply: Any) -> None:
        """Check the stream's reply to one message: stored at sequence `want`, or why not."""
        if reply.headers and reply.headers.get("Status") == "503":
            raise ConnectionError(f"JetStream did not answer for batch {first_seq}: no stream {self.target.stream!r}")
        try:
            answer = json.loads(reply.data)
        except (ValueError, RecursionError):  # (nested deeper than the interpreter's stack: a RecursionError)
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None and not isinstance(error, dict):  # JetStream's error is {"code", "err_code", "description"}
            # (intruder review of session 22: `{"error": "x"}` on the reply inbox stopped the node with an
            # AttributeError; a reply the stream does not give is a forged ack, as `puback_problem` says)
            _log.critical("replication: the ack for batch %d is not the stream's: its error is not a JSON object; this "
                          "node stops acknowledging", first_seq)
            raise Fenced(f"JetStream's ack for batch {first_seq} is not one the stream gives: its error "
                         f"{str(error)[:64]!r} is not a JSON object")
        if error is not None:
            if error.get("err_code") in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_MSG_ID):
                raise Fenced(f"JetStream refused batch {first_seq}: another node published after stream sequence "
                             f"{self.stream_seq} (this node was deposed at epoch {self.epoch})")
            raise ConnectionError(f"JetStream refused batch {first_seq}: {error.get('description')} "
                                  f"(err_code {error.get('err_code')})")
        wrong = puback_problem(answer, self.target.stream, want)
        if wrong:  # a forged ack (F2 of session 16), or a writer without expectations
            _log.critical("replication: the ack for batch %d is not the stream's: %s; this node stops acknowledging",
                          first_seq, wrong)
            raise Fenced(f"JetStream's ack for batch {first_seq} is not one the stream gives: {wrong}")
        self.stream_seq = want

    def _publish_one(self, first_seq: int, headers: dict[str, str], data: bytes) -> int:
        """One raw message with the caller's headers, outside the record order (tests)."""
        return self.link.call(self._apublish_one(first_seq, headers, data))

    async def _apublish_one(self, first_seq: int, headers: dict[str, str], data: bytes) -> int:
        """Signed by this node for the position its Nats-Expected-Last-Sequence names (as a primary
        that still holds its key would)."""
        from nats.js.errors import APIError

        headers = {k: v for k, v in headers.items() if k not in ("Rf-Sig", "Rf-Node")}
        self._sign(headers, data, int(headers["Nats-Expected-Last-Sequence"]) + 1)
        try:
            ack = await self.link.js.publish(self.target.subject, data, headers=headers, stream=self.target.stream,
                                             timeout=PUBLISH_TIMEOUT_S)
        except APIError as err:
            if getattr(err, "err_code", None) == ERR_WRONG_LAST_SEQUENCE:
                raise Fenced(f"JetStream refused batch {first_seq}: another node published after stream sequence "
                             f"{self.stream_seq} (this node was deposed at epoch {self.epoch})") from None
            raise
        wrong = pub_ack_problem(ack, self.target.stream, int(headers["Nats-Expected-Last-Sequence"]) + 1)
        if wrong:  # the stream opener too (code review of session 16: only the batches' acks were checked)
            raise Fenced(f"JetStream's ack for batch {first_seq} is not one the stream gives: {wrong}")
        return int(ack.seq)

    def close(self) -> None:
        self._stop.set()
        if self._hasher is not None:
            self._hasher.close()
        if self._digest_pool is not None:
            self._digest_pool.shutdown(wait=True)
        self.link.close()


def puback_problem(answer: Any, stream: str, want: int) -> str:
    """Why `answer` is not JetStream's ack of a message stored at sequence `want` of `stream`, or "".
    Every publish expects the stream's last sequence, so the ack's `seq` is known beforehand; an ack
    naming another stream, another sequence, or a duplicate was not given by the stream for this
    publish (whoever may subscribe to the batches subject sees each publish's reply inbox: intruder
    review of session 16, F2)."""
    if not isinstance(answer, dict):
        return "not a JSON object"
    if answer.get("stream") != stream:
        return f"it names stream {str(answer.get('stream'))[:64]!r}, not {stream!r}"
    seq = answer.get("seq")
    if type(seq) is not int or seq != want:
        return f"it names stream sequence {str(seq)[:24]}, not {want}"
    if answer.get("duplicate"):
        return "it says duplicate"
    return ""


def pub_ack_problem(ack: Any, stream: str, want: int) -> str:
    """`puback_problem` for the PubAck nats-py's `js.publish` returns (which checks neither)."""
    return puback_problem({"stream": getattr(ack, "stream", None), "seq": getattr(ack, "seq", None),
                           "duplicate": getattr(ack, "duplicate", None)}, stream, want)


def outcome_digest(outputs: list[list[Any]]) -> str:
    """SHA-256 (hex) of a batch's events, per command in order, in the engine's canonical encoding
    (the journal's JSON: amounts may exceed 64 bits)."""
    import hashlib

    from ..engine.commands import encode

    return hashlib.sha256(encode(outputs)).hexdigest()


def _hash_without_gc(engine: Any) -> str:
    """The state hash with the cyclic collector paused: serialising the whole state allocates one
    container per account and transfer, and those allocations alone set off collections — up to a
    full one over the whole heap (30+ ms measured) — on the sequencer thread. The temporaries hold
    no cycles, so reference counting frees them all the same."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return str(engine.state_hash())
    finally:
        if enabled:
            gc.enable()


class _Ack(asyncio.Future):  # type: ignore[type-arg]
    """The future of one message's ack from the stream, named by its reply subject."""

    def __init__(self, reply: str, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.reply = reply


def _settler(done: "concurrent.futures.Future[None] | asyncio.Future[None]") -> Callable[[BaseException | None], None]:
    """`settle(err)`: complete `done` (a concurrent or an asyncio future) once — with None, or failed with `err`."""
    def settle(err: BaseException | None) -> None:
        if done.done():
            return
        if err is None:
            done.set_result(None)
        else:
            done.set_exception(err)
    return settle


@dataclass(frozen=True)
class _Later:
    """`begin`'s token for a batch whose state hash a forked child computes after it is applied."""

    future: "concurrent.futures.Future[None] | _Sent"
    last_seq: int


@dataclass
class _Sent:
    """`begin`'s token for a batch sent on the direct connection: its messages' (stream sequence,
    reply subject), or the error that stopped the send."""

    first_seq: int
    last_seq: int
    at: float  # float-ok: time.monotonic() of the send
    sent: list[tuple[int, str]] = field(default_factory=list)
    error: BaseException | None = None


class _ForkedHasher:
    """The state hash off the sequencer thread: `start` forks; the child (a copy-on-write image of
    the process at that instant, so exactly the state after the batch) hashes it and writes
    `SEQ HASH` to a pipe; `ready` collects it without blocking, as headers for the next batch
    (`Rf-State-Of`, `Rf-State-Hash-Of`). One child at a time; the sequencer pays only the fork."""

    def __init__(self) -> None:
        self._child: tuple[int, int, int] | None = None  # pid, read end, sequence

    def idle(self) -> bool:
        return self._child is None

    def start(self, engine: Any, last_seq: int) -> None:
        import gc

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: hash, report, leave without running any parent cleanup
            status = 1
            try:
                gc.disable()
                os.nice(19)  # the sequencer comes first: the child takes what CPU is left
                os.close(read_fd)
                os.write(write_fd, f"{last_seq} {engine.state_hash()}\n".encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._child = (pid, read_fd, last_seq)

    def ready(self) -> dict[str, str]:
        if self._child is None:
            return {}
        pid, read_fd, last_seq = self._child
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            return {}
        self._child = None
        try:
            line = os.read(read_fd, 256).decode().split()
        finally:
            os.close(read_fd)
        if status != 0 or len(line) != 2 or line[0] != str(last_seq):
            _log.warning("replication: the state hash of sequence %d could not be computed (exit %d)", last_seq, status)
            return {}
        return {"Rf-State-Of": line[0], "Rf-State-Hash-Of": line[1]}

    def close(self) -> None:
        if self._child is not None:
            pid, read_fd, _ = self._child
            os.waitpid(pid, 0)
            os.close(read_fd)
            self._child = None


def _records(journal_dir: Path) -> Any:
    from ..journal.journal import scan

    return scan(journal_dir, decode_from_seq=2**62)  # verified, payloads not kept


class Follower:
    """The standby's side: append each verified batch to its own journal and apply it, until promoted.

    It is the only writer of its own node directory (it holds that directory's lock); it never
    writes to the stream except the one fence message that makes it the primary.
    """

    def __init__(self, target: ReplicationTarget, node_dir: Path, node_id: str,
                 on_progress: Callable[[str], None] = lambda _: None,
                 on_batch: Callable[[Any, Any, list[list[Any]]], None] | None = None, *,
                 key: Any, peers: Mapping[str, Any] | None, staffless_ok: bool = True) -> None:
        """`key`: this node's Ed25519 key (signs its fence and its leader record). `peers`: node id ->
        public key, the peers file every message's signature is checked against; None checks no
        signature and never takes a lease over (in-process use only: `serve --standby` requires
        a peers file, `serving.node_trust`). `staffless_ok`: in an exchange without staff operators, a
        promotion (a fence, a request) without the operators' quorum is accepted (dev mode; `serve`
        passes its settings' mode) or refused (`grant_refusal`, intruder review of session 22, B4)."""
        from ..app import replay_journal
        from ..journal.journal import DataDirLock, JournalWriter, check_node_placement

        check_first_primary(target, peers, "--standby")
        self.target, self.node_dir, self.node_id = target, node_dir, node_id
        self.key, self.peers = key, peers
        self.staffless_ok = staffless_ok
        self._staffless_said = False  # the warning of a replica without staff operators, said once caught up
        #: epoch -> the node entitled to sign in it (the signer of its fence; for the first epoch
        #: read, the first signer verified)
        self._leaders: dict[int, str] = {}
        #: epoch -> the lease its fence declares (`declared_lease`; None: a fence of a version before session 16)
        self._leases: dict[int, int | None] = {}
        self._session = ""  # `Rf-Session` of the last batch applied
        self._owed = 0  # the last sequence of the batch whose outcome digest the next batch must carry
        self._owed_hash = False  # a catch-up record without the state hash: the next one must be catch-up or carry it
        self._forged_seen = -1  # the revision of a forged leader record already reported
        self._untrusted_seen = -1  # the revision of an unverified leader record naming another node already reported
        self._replay_seen = -1  # the revision of a replayed leader record already reported
        #: the newest verified leader record seen (`lease_key`), and when (monotonic s): its lease is the one that runs
        self._freshest: tuple[int, int, int] = (-1, 0, 0)
        self._freshest_record: dict[str, Any] | None = None
        self._fresh_at = 0.0  # float-ok: monotonic seconds
        self.on_progress = on_progress
        check_node_placement(node_dir)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(node_dir, f"ringfence serve --standby (node {node_id})")
        try:
            #: the highest epoch this node saw or held (epochs.py); the standby's claims go above it
            self.memory = EpochMemory(node_dir, target.stream)
            # with read models to keep warm (`on_batch`), they need the whole history: replay from genesis
            self.engine, _, scan = replay_journal(node_dir, truncate=True, use_snapshots=on_batch is None, on_batch=on_batch)
            #: last sequence -> record hash of the local journal, to check the stream against on a restart
            self._local: dict[int, bytes] = {r.last_seq: r.hash for r in _records(node_dir / "journal")}
            self.writer = JournalWriter(node_dir / "journal", next_seq=scan.last_seq + 1, last_hash=scan.last_hash,
                                        tail_segment=scan.tail_segment, tail_size=scan.tail_size,
                                        prezero=True)  # as the primary's (`serve`): docs/latency.md
            self.link = NatsLink(target)
            missing = missing_stream(self.link)
            if missing:  # said once; the standby then waits on the (new, empty) stream for a primary
                on_progress(f"standby {node_id}: {missing}; creating it empty and waiting for a primary to write to it")
            self.kv = self.link.ensure_stream_and_bucket(read=True)
            #: the stream's last sequence when this standby started: a take-over fence at or below it is history
            #: (`grant_refusal`), judged by the lease its stream declares, not by this standby's options of today
            self.tail_at_start = int(self.link.call(self.link.js.stream_info(target.stream)).state.last_seq)
        except BaseException:  # release the lock whatever failed, then report it
            self.lock.release()
            raise
        self.stream_seq = 0  # last stream message consumed
        #: the journal sequence after the last complete record read from the stream: while it is below the
        #: journal writer's next sequence, the stream is showing what this node applied before (a restart)
        self._stream_next = 1
        self._pending: tuple[tuple[str, str, int], list[bytes]] | None = None  # chunks of a large record
        self.fence_epoch = 0
        self.batches_applied = 0
        self.last_state_hash = ""  # the newest state hash checked against the primary's
        self._request_rev = 0  # the newest promotion request considered
        # the promotion accepted (answer key, request, its revision, approvers), until its fence is in
        self._accepted: tuple[str, Any, int, list[str]] | None = None
        self._later: dict[int, str] = {}  # sequence -> our state hash, awaiting the primary's (state_hash_later)
        self.later_checked = 0
        self._outcomes: dict[int, str] = {}  # last sequence of a batch -> our outcome digest, awaiting the primary's
        self.outcomes_checked = 0
        self._digests: dict[int, str] = {}  # last sequence of a batch -> our state digest, awaiting the primary's
        self.digests_checked = 0
        #: `fn(engine, batch, outputs)` after each batch is replayed or applied: the read models kept
        #: warm (`serve --standby`, api/service.py `ReadModels`)
        self.on_batch = on_batch
        self._digesting = False  # from the first batch that carries the primary's digest
        #: why this standby cannot go on (a stream message missing: `_check_gap`), or ""
        self.problem = ""
        self._gap_checked = -1e9  # float-ok: monotonic seconds of the last look for a gap
        #: the refusal that stopped this standby: every later `poll` raises it again
        self.refused: Refused | JournalCorrupt | None = None

    def _apply(self, headers: dict[str, str], payload: bytes) -> None:
        from ..engine.core import ShardHalt
        from ..engine.node import rebuild_halted
        from ..journal.journal import encode_record

        first_seq, count = int(headers["Rf-First-Seq"]), int(headers["Rf-Count"])
        epoch = int(headers["Rf-Epoch"])
        if epoch < self.fence_epoch:
            raise Fenced(f"stream message {self.stream_seq}: a batch from epoch {epoch} after the fence of epoch "
                         f"{self.fence_epoch}: a deposed primary's write; refusing it")
        self._check_later_hash(headers)
        self._check_outcome(headers)
        if "Rf-State-Digest-Of" in headers:  # the state digest after an earlier batch (one the primary took later)
            self._check_digest(int(headers["Rf-State-Digest-Of"]), headers, "Rf-State-Digest")
        elif "Rf-Outcome-Of" in headers:  # (a primary before session 11 sends it with the next batch)
            self._check_digest(int(headers["Rf-Outcome-Of"]), headers, "Rf-Digest")
        w = self.writer
        if first_seq + count - 1 < w.next_seq:  # already in the local journal (a restart of the follower)
            if self._local.get(first_seq + count - 1) != bytes.fromhex(headers["Rf-Hash"]):
                raise JournalCorrupt(f"stream message {self.stream_seq}: batch {first_seq} differs from this standby's "
                                     "journal: the histories diverged; rebuild this standby on a fresh folder")
            self._stream_next = max(self._stream_next, first_seq + count)
            return
        if first_seq != w.next_seq or bytes.fromhex(headers["Rf-Prev-Hash"]) != w.last_hash:
            said = (f"stream message {self.stream_seq}: batch {first_seq} does not follow sequence {w.next_seq - 1} "
                    "and its record hash")
            if first_seq <= w.next_seq:  # not a gap in the stream: this folder's journal is not the stream's history
                said += (f": this data folder's journal holds a tail the stream does not (records up to sequence "
                         f"{w.next_seq - 1}, where the stream goes on at {first_seq} with other records): a tail that "
                         "was never replicated, as a deposed primary's folder holds (batches fsynced locally, never "
                         "acknowledged); rejoin as a standby on a fresh folder, or on one made by `ringfence backup "
                         "restore` (docs/resilience.md, \"Rejoining a deposed primary\")")
            raise JournalCorrupt(said)
        _, digest = encode_record(payload, first_seq, count, w.last_hash)
        if digest.hex() != headers["Rf-Hash"]:
            raise JournalCorrupt(f"stream message {self.stream_seq}: batch {first_seq} fails its record hash")
        self._require_state_check(headers, first_seq + count - 1)
        batch = self._decoded(payload, first_seq, count)  # validated before anything is appended
        w.append(payload, first_seq, count)
        self._stream_next = max(self._stream_next, first_seq + count)
        outputs: list[list[Any]] = []
        for i, command in enumerate(batch.commands):
            try:
                outputs.append(self.engine.apply(command, first_seq + i, batch.ts_ns, batch.entropy))
            except ShardHalt as halt:
                outputs.append(rebuild_halted(self.node_dir, self.engine, halt))
        self._outcomes[first_seq + count - 1] = outcome_digest(outputs)
        while len(self._outcomes) > 64:
            self._outcomes.pop(min(self._outcomes))
        if self._digesting:
            self._digests[first_seq + count - 1] = self.engine.state_digest()
            while len(self._digests) > 64:
                self._digests.pop(min(self._digests))
        if self.on_batch is not None:
            self.on_batch(self.engine, batch, outputs)
        if headers.get("Rf-State-Pending"):  # the primary's hash of this state comes later: keep ours
            self._later[first_seq + count - 1] = _hash_without_gc(self.engine)
            while len(self._later) > 64:
                self._later.pop(min(self._later))
        expected = headers.get("Rf-State-Hash", "")
        if expected:
            if _hash_without_gc(self.engine) != expected:
                raise JournalCorrupt(f"after batch {first_seq} the standby's state hash differs from the primary's")
            self.last_state_hash = expected
        self.batches_applied += 1

    def _require_state_check(self, headers: dict[str, str], last_seq: int) -> None:
        """No header combination skips every check: a batch carries the state hash after it, or
        says its hash comes later (`Rf-State-Pending`), or that its outcome digest (and state
        digest) comes with the next batch of the same publisher run (`Rf-Outcome-Next`, held to it
        here), or is a catch-up record (`Rf-Catch-Up`) of a run whose last catch-up record carries
        the state hash."""
        seq, session = self.stream_seq, headers.get("Rf-Session", "")
        if session != self._session:  # a new publisher run (restart or promotion): nothing owed by the old one
            self._session, self._owed, self._owed_hash = session, 0, False
        state, catch_up = headers.get("Rf-State-Hash", ""), "Rf-Catch-Up" in headers
        if self._owed and headers.get("Rf-Outcome-Of") != str(self._owed):
            raise self._refuse(seq, f"the outcome digest of the batch ending at sequence {self._owed} was promised "
                               "with this batch and is not in it")
        if self._owed_hash and not (state or catch_up):
            raise self._refuse(seq, "the catch-up records before it ended without the state hash")
        if not (state or catch_up or "Rf-State-Pending" in headers or "Rf-Outcome-Next" in headers):
            raise self._refuse(seq, "the batch carries no state check (no state hash, no pending hash, no outcome "
                               "digest to follow)")
        self._owed = last_seq if "Rf-Outcome-Next" in headers and not catch_up else 0
        self._owed_hash = catch_up and not state

    def _decoded(self, payload: bytes, first_seq: int, count: int) -> Any:
        """The record's batch, decoded and checked to apply in order (sequence, count, sequencer time)."""
        try:
            batch = self.engine.codec.batch.decode(payload)
        except Exception as err:  # noqa: BLE001 - any decoding failure is a refusal, named
            raise self._refuse(self.stream_seq, f"batch {first_seq} does not decode ({type(err).__name__})") from None
        if len(batch.commands) != count:
            raise self._refuse(self.stream_seq, f"batch {first_seq} holds {len(batch.commands)} commands, its header says {count}")
        if first_seq != self.engine.last_seq + 1:
            raise self._refuse(self.stream_seq, f"batch {first_seq} does not follow the engine's sequence {self.engine.last_seq}")
        if batch.ts_ns < self.engine.now_ns:
            raise self._refuse(self.stream_seq, f"batch {first_seq}: sequencer time goes backwards "
                               f"({batch.ts_ns} < {self.engine.now_ns}): an old payload replayed?")
        return batch

    def _check_outcome(self, headers: dict[str, str]) -> None:
        """A batch carries the primary's outcome digest of the batch before it."""
        if "Rf-Outcome-Of" not in headers:
            return
        seq = int(headers["Rf-Outcome-Of"])
        ours = self._outcomes.pop(seq, None)
        if ours is None:
            return  # applied before this follower started (a restart): nothing of ours to compare
        if ours != headers["Rf-Outcome"]:
            raise JournalCorrupt(f"stream message {self.stream_seq}: the batch ending at sequence {seq} produced "
                                 "different events on this standby than on the primary: the replicas diverged")
        self.outcomes_checked += 1

    def _check_digest(self, seq: int, headers: dict[str, str], header: str) -> None:
        """A batch may carry (in `header`) the primary's state digest after the batch ending at `seq`."""
        theirs = headers.get(header)
        if theirs is None:
            return
        # a primary of another version digests differently (before the header existed: format 1):
        # say so, rather than report every replica as diverged
        fmt = headers.get("Rf-Digest-Format", "state-digest-1")
        if fmt != STATE_DIGEST_FORMAT:
            raise ConfigError(f"stream message {self.stream_seq}: the primary sends state digests of format {fmt!r}, "
                              f"this standby computes {STATE_DIGEST_FORMAT!r}: run the same ringfence version on "
                              "every node (or set state_digest=0 on the primary while upgrading)")
        ours = self._digests.pop(seq, None)
        self._digesting = True  # the primary sends digests: keep ours from now on
        if ours is None:
            return  # applied before this follower kept digests (a restart, or the first digest seen)
        if ours != theirs:
            raise JournalCorrupt(f"stream message {self.stream_seq}: after sequence {seq} the standby's state digest "
                                 "differs from the primary's: the replicas diverged")
        self.digests_checked += 1

    def _check_later_hash(self, headers: dict[str, str]) -> None:
        """A batch may carry the primary's state hash after an earlier batch (`state_hash_later`)."""
        if "Rf-State-Of" not in headers:
            return
        seq, theirs = int(headers["Rf-State-Of"]), headers["Rf-State-Hash-Of"]
        ours = self._later.pop(seq, None)
        if ours is None:
            return  # applied before this follower started (a restart): nothing of ours to compare
        if ours != theirs:
            raise JournalCorrupt(f"after sequence {seq} the standby's state hash differs from the primary's")
        self.last_state_hash = theirs
        self.later_checked += 1

    def poll(self) -> int:
        """Consume every stream message available now; returns how many. `Refused` once a message is
        refused, and again on every later call (`refused`); the same for `JournalCorrupt` (a batch whose
        state or outcome differs from the primary's: the replica has drifted and must never go past it,
        nor be promoted)."""
        if self.refused is not None:  # a refusal sticks: this standby never goes past the message it refused
            raise self.refused
        try:
            return self._poll()
        except (Refused, JournalCorrupt) as err:
            self.refused = err
            raise

    def _poll(self) -> int:
        from nats.js.errors import NotFoundError

        n = 0
        while True:
            try:
                msg = self.link.call(self.link.js.get_msg(self.target.stream, self.stream_seq + 1))
            except NotFoundError:
                self._check_gap()
                return n
            headers = msg.headers or {}
            seq = self.stream_seq + 1
            self._verify(seq, headers, msg.data or b"")
            if headers.get("Rf-Kind") == KIND_FENCE:  # its grant checked before anything of it is recorded
                self._check_grant(seq, headers, msg.data or b"")
                self._leaders[int(headers["Rf-Epoch"])] = headers.get("Rf-Node", "")
                self._leases[int(headers["Rf-Epoch"])] = declared_lease(msg.data or b"", headers.get("Rf-Node", ""),
                                                                        int(headers["Rf-Epoch"]))
            self.stream_seq = seq
            if headers.get("Rf-Kind") == KIND_FENCE:
                self._pending = None  # a record cut off by a failover was never acknowledged: dropped
                self._owed, self._owed_hash = 0, False
                self.fence_epoch = max(self.fence_epoch, int(headers["Rf-Epoch"]))
            else:
                payload = self._assemble(headers, msg.data or b"")
                if payload is not None:
                    self._apply(headers, payload)
            n += 1

    def _check_gap(self) -> None:
        """The next stream message is not there: fine when none was stored after it yet; but when the
        stream holds later ones, it was dropped (a limit or an age on a stream someone else made,
        intruder review of session 15, F4) and never comes back. Said once (log, progress line,
        `problem` in /v1/standby), checked at most once a second; this standby then neither follows
        nor takes over (`follow_until_promoted`)."""
        from nats.js.errors import NotFoundError

        now = time.monotonic()
        if now - self._gap_checked < 1:
            return
        self._gap_checked = now
        want = self.stream_seq + 1
        state = self.link.call(self.link.js.stream_info(self.target.stream)).state
        if int(state.last_seq) < want:
            return  # nothing after it yet: waiting for the primary
        try:
            self.link.call(self.link.js.get_msg(self.target.stream, want))
            return  # stored meanwhile: the next poll reads it
        except NotFoundError:
            pass
        problem = (f"stream message {want} is missing while the stream holds messages {state.first_seq}..{state.last_seq}: "
                   "the stream dropped messages the primary stored (a limit, an age or a purge of its configuration); "
                   f"this standby cannot follow past sequence {self.stream_seq} and will not take over: fix the stream "
                   "(or move to a new stream name) and rebuild it from a backup of a node that applied past it "
                   "(docs/resilience.md)")
        said, self.problem = self.problem, problem  # /v1/standby shows the stream's figures as they grow
        if not said:  # the log and the progress line say it once
            _log.critical("replication: %s", problem)
            self.on_progress(f"standby {self.node_id}: {problem}")

    def _check_grant(self, seq: int, headers: Mapping[str, str], body: bytes) -> None:
        """A fence (already verified as signed by its node, `_verify`) opens its epoch only with a grant
        this standby verifies itself (`grant_refusal`) against its replica, which stands at the fence's
        position: not the signer's word. A fence in the part of the stream this node applied past
        before (a restart: its journal goes further) was accepted then and is not checked again (the
        replica has moved on; a fence of a version before session 15 carries no grant)."""
        if self.peers is None or self._stream_next < self.writer.next_seq:
            return
        epoch, node = int(headers["Rf-Epoch"]), headers.get("Rf-Node", "")
        if opens_stream(body):  # the stream's opener: message 1 of the first primary (`_check_first`), nowhere else
            if seq != 1:
                _log.critical("replication: stream message %d: an opener of node %r in the middle of the stream", seq, node)
                raise self._refuse(seq, f"a fence of node {node!r} opening epoch {epoch} claims to open the stream, "
                                   "which only stream message 1 does")
            self._check_first(seq, node, epoch)
            grant, reason = read_grant(body, node, epoch)
            if grant is None:
                raise self._refuse(seq, f"the stream's opener is not granted: {reason}")
            return
        take_overs = bool(self.target.auto_promote or self.target.lease_ms)
        reason = grant_refusal(self.engine, self.target.stream, node, epoch, body, take_overs=take_overs,
                               staffless_ok=self.staffless_ok, lease_before=self._leases.get(self.fence_epoch), history=seq <= self.tail_at_start)
        if reason:
            _log.critical("replication: stream message %d: a fence of node %r opening epoch %d is not granted: %s",
                          seq, node, epoch, reason)
            raise self._refuse(seq, f"a fence of node {node!r} opening epoch {epoch} is not granted: {reason}")

    def _refuse(self, seq: int, reason: str) -> Refused:
        return Refused(f"stream message {seq} refused: {reason}; nothing of it was appended and this standby stops "
                       "(docs/resilience.md, 'Who a standby trusts')")

    def _verify(self, seq: int, headers: Mapping[str, str], data: bytes) -> None:
        """Before anything else: the message at stream sequence `seq` is signed by a peer, for this
        position, and by the node entitled to its epoch (module docstring). Raises `Refused`."""
        from ..nodekey import verify

        kind = headers.get("Rf-Kind")
        if kind not in (KIND_BATCH, KIND_FENCE):
            raise self._refuse(seq, f"unknown message kind {kind!r}")
        epoch = bounded_int(headers.get("Rf-Epoch", ""))
        if epoch is None:
            raise self._refuse(seq, "no valid Rf-Epoch (a number of at most 18 digits)")
        if self.peers is None:
            return  # no peers file (in-process use only: `serve --standby` requires one)
        node, sig = headers.get("Rf-Node", ""), headers.get("Rf-Sig", "")
        if not node or not sig:
            raise self._refuse(seq, "the message is not signed (no Rf-Node / Rf-Sig)")
        public = self.peers.get(node)
        if public is None:
            raise self._refuse(seq, f"signed as node {node!r}, which is not in the peers file")
        try:
            raw = bytes.fromhex(sig)
        except ValueError:
            raw = b""
        if not verify(public, raw, signed_bytes(self.target.stream, headers, data)):
            raise self._refuse(seq, f"the signature is not that of node {node!r} (forged or altered)")
        if headers.get("Rf-Pos") != str(seq):
            raise self._refuse(seq, f"signed for stream sequence {headers.get('Rf-Pos')!r}, stored at {seq}: a replayed message")
        if not self._leaders:
            self._check_first(seq, node, epoch)
        owner = self._leaders.get(epoch)
        if kind == KIND_FENCE:
            if owner is not None and owner != node:
                raise self._refuse(seq, f"a fence for epoch {epoch} signed by {node!r}, but {owner!r} opened that epoch")
            return  # recorded by `poll` once its grant is checked
        if owner is None:
            if self._leaders:
                raise self._refuse(seq, f"a batch at epoch {epoch}, which no fence opened (epochs read: "
                                   f"{sorted(self._leaders)}); signed by {node!r}")
            self._leaders[epoch] = owner = node  # the first epoch this follower reads: its first signer leads it
        if owner != node:
            raise self._refuse(seq, f"a batch at epoch {epoch} signed by {node!r}, but {owner!r} leads that epoch")

    def _check_first(self, seq: int, node: str, epoch: int) -> None:
        """The first message this standby reads (the stream's first: it reads from sequence 1) opens the
        stream's first epoch, which no fence before it grants: it must be signed by the stream's first
        primary, the node the operators named (`first_primary=NODE` in the URL, else the first node of the
        peers file). Another node's key alone opens no stream (intruder review of session 15, F2)."""
        assert self.peers is not None
        first = self.target.first_primary or next(iter(self.peers), "")
        if node == first:
            return
        named = ("first_primary in this standby's URL" if self.target.first_primary else
                 "the first node of the peers file, as no first_primary=NODE is in this standby's URL")
        _log.critical("replication: stream %s opens with a message of node %r, not of its first primary %r",
                      self.target.stream, node, first)
        raise self._refuse(seq, f"the stream's first message (epoch {epoch}) is signed by {node!r}, but the stream's first "
                           f"primary is {first!r} ({named}): a node key alone does not open a stream. If {node!r} did "
                           f"open this stream, add first_primary={node} to this standby's --standby URL; if not, its key "
                           "may be stolen: move to a new stream name")

    def _assemble(self, headers: dict[str, str], data: bytes) -> bytes | None:
        """The whole payload once a record's last chunk arrives (None while chunks are pending).

        An incomplete record followed by anything but its next chunk (a fence, a republished
        record) is dropped: its primary stopped before the last chunk, so it was never acknowledged.
        """
        if "Rf-Chunk" not in headers:
            self._pending = None
            return data
        index, total = (int(x) for x in headers["Rf-Chunk"].split("/"))
        key = (headers["Rf-First-Seq"], headers["Rf-Hash"], total)
        if index == 1:
            self._pending = (key, [data])
        elif self._pending is not None and self._pending[0] == key and len(self._pending[1]) == index - 1:
            self._pending[1].append(data)
        else:
            self._pending = None
            return None
        if index < total:
            return None
        parts = self._pending[1]
        self._pending = None
        return b"".join(parts)

    def _fence(self, epoch: int, grant: bytes) -> None:
        """Publish the fence at `epoch` with its `grant` (`fence_grant`) as body: only possible once every
        stream message has been consumed. The grant is checked first as every other node will check
        it, at the fence's position: a fence they would refuse is not published (`Refused`)."""
        from nats.js.errors import APIError

        while True:
            self.poll()
            if self.peers is not None:
                reason = grant_refusal(self.engine, self.target.stream, self.node_id, epoch, grant, take_overs=True,
                                       staffless_ok=self.staffless_ok, lease_before=self._leases.get(self.fence_epoch))
                if reason:
                    raise Refused(f"this standby will not fence epoch {epoch}: {reason}; the other nodes would refuse "
                                  "the fence. Promote it again with fresh approvals", field="approvals")
            headers = _headers(KIND_FENCE, epoch, self.writer.next_seq, 0, self.writer.last_hash, self.writer.last_hash,
                               self.engine.state_hash(), self.stream_seq)
            headers["Nats-Msg-Id"] += f"-x{self.stream_seq}"
            headers["Rf-Pos"] = str(self.stream_seq + 1)
            sign_message(self.key, self.node_id, self.target.stream, headers, grant)
            try:
                ack = self.link.call(self.link.js.publish(self.target.subject, grant, headers=headers,
                                                          stream=self.target.stream))
            except APIError as err:
                if getattr(err, "err_code", None) == ERR_WRONG_LAST_SEQUENCE:
                    continue  # the old primary got one more batch in: apply it, then fence again
                raise
            wrong = pub_ack_problem(ack, self.target.stream, self.stream_seq + 1)
            if wrong:  # whoever can subscribe to the subject sees the reply inbox (F2): is the fence in?
                raise OutcomeUnknown(f"the acknowledgement of this standby's fence at epoch {epoch} is not one the stream "
                                     f"gives ({wrong}): whether the fence is in the stream is unknown; see "
                                     "`ringfence replication status` and the stream", field="--standby")
            self.stream_seq = int(ack.seq)
            self.fence_epoch = epoch
            return

    def follow_until_promoted(self, stop: threading.Event | None = None) -> int:
        """Follow the stream; when the leader record names this node, fence and return the epoch. `stop` set
        (serve's SIGINT/SIGTERM handler): return 0 between two batches, nothing half-applied."""
        last_report: float | None = None  # float-ok: monotonic seconds
        reported_seq, batches_then = -1, self.batches_applied
        seen = -1  # the revision of the leader record last looked at
        while stop is None or not stop.is_set():
            self.poll()
            if stop is not None and stop.is_set():  # stopped while polling: take no promotion after that
                break
            if self.problem:  # a hole in the stream never closes: no promotion, no take-over from here
                time.sleep(POLL_S)
                continue
            if not self._staffless_said and self.stream_seq >= self.tail_at_start:
                self._say_staffless()
            leader, revision = leader_of(self.link, self.kv)
            if revision != seen:
                seen = revision
                # a record's epoch is remembered only when its signature verifies (a forged one would raise
                # every later claim); the fences read from the stream were verified message by message
                trusted = leader is not None and (self.peers is None or self._trusted(leader))
                self.memory.see(max(int(leader["epoch"]) if trusted and leader is not None else 0, self.fence_epoch))
                if leader is not None and self.peers is not None and trusted:
                    self._observe(leader, revision)
            if self.consider_promotion(leader, revision):
                leader, revision = leader_of(self.link, self.kv)
            elif leader is not None and leader["node"] != self.node_id:
                self._maybe_take_over(leader, revision)
            if leader is not None and leader["node"] == self.node_id and int(leader["epoch"]) > self.fence_epoch \
                    and self._own_record(leader, revision):
                self.memory.see(int(leader["epoch"]))
                try:
                    self._fence(int(leader["epoch"]), fence_grant(leader, self.target.lease_ms))
                except (OutcomeUnknown, *nats_failures()) as err:  # the fence may be in the stream (a lost ack)
                    self._tell_fenced(f"standby {self.node_id} took the leader record at epoch {leader['epoch']}; whether "
                                      f"its fence is in the stream is unknown: {nats_failed(err)}", unknown=True)
                    raise
                except RingfenceError as err:
                    self._tell_fenced(f"standby {self.node_id} took the leader record at epoch {leader['epoch']} but its "
                                      f"fence was not published: {err}")
                    raise
                self._tell_fenced()
                self._say_leadership(f"promoted at epoch {leader['epoch']}, fenced at stream "
                                 f"sequence {self.stream_seq}, journal sequence {self.engine.last_seq} state hash {self.engine.state_hash()}")
                return int(leader["epoch"])
            now = time.monotonic()
            if self.engine.last_seq != reported_seq and (last_report is None or now - last_report >= PROGRESS_S):
                # at once, then at most every PROGRESS_S: a primary's every batch (the index feed quotes each
                # second) made one line each; /v1/standby has the live figures
                batches = self.batches_applied - batches_then
                last_report, reported_seq, batches_then = now, self.engine.last_seq, self.batches_applied
                self.on_progress(f"standby {self.node_id}: applied through sequence {self.engine.last_seq} "
                                 f"state hash {self.engine.state_hash()} (stream sequence {self.stream_seq}; "
                                 f"{batches} {'batch' if batches == 1 else 'batches'} since the last line)")
            time.sleep(POLL_S)
        return 0

    def _say_staffless(self) -> None:
        """Once caught up with the stream as it stood at start: a replica without staff operators says what
        that means, once (a WARNING): outside dev mode every promotion is refused until staff exist; in dev
        mode any peer's node key opens an epoch (intruder review of session 22, B4)."""
        self._staffless_said = True
        if has_staff_quorum(self.engine):
            return
        if self.staffless_ok:
            _log.warning("replication: standby %s: %s", self.node_id, STAFFLESS_DEV)
        else:
            _log.warning("replication: standby %s: no staff operators in its replica at sequence %d: every promotion "
                         "is refused until staff exist (RINGFENCE_MODE=prod); register them with `ringfence staff init` "
                         "on the stopped primary (docs/resilience.md, 'A node key alone opens no epoch')",
                         self.node_id, self.engine.last_seq)

    def _say_leadership(self, what: str) -> None:
        """A line on this standby taking the leadership (or being refused it), with the UTC time first."""
        self.on_progress(f"{console_time()} standby {self.node_id}: {what}")

    def _own_record(self, leader: Mapping[str, Any], revision: int) -> bool:
        """A leader record naming this node is acted on only if this node signed it (it writes it
        itself, after `verify_promotion` or a lease take-over); anything else is forged: logged
        once per revision, ignored."""
        if leader_signature_ok(leader, self.target.stream, self.key.public_key()):
            return True
        if revision != self._forged_seen:
            self._forged_seen = revision
            _log.critical("replication: forged leader record naming this node (epoch %r, revision %d, not signed by "
                          "it): ignored; promotion needs `ringfence replication promote`", leader.get("epoch"), revision)
            self.on_progress(f"standby {self.node_id}: forged leader record at revision {revision} (names this node "
                             "without its signature): ignored")
        return False

    def verify_promotion(self, request: dict[str, Any], leader: dict[str, Any] | None) -> list[str]:
        """Check a promotion request against this standby's replica at its last applied sequence.

        With staff registered, the request needs the signatures of the operator quorum over
        `[stream, node, epoch]` (`staff/state.py` check_quorum: registered, active, operator role,
        distinct people, valid Ed25519 signature, not expired in sequencer time), each also unexpired
        by this machine's clock. Without staff, an operator's unsigned request is enough in dev mode
        (`staffless_ok`) and refused outside it (`STAFFLESS_REFUSED`: intruder review of session 22, B4).
        Returns the approvers' ids; raises with the rule named."""
        from ..staff.decisions import OPERATOR, parse_approval
        from ..staff.state import MAX_DECISION_TTL_NS, StaffRefused, check_quorum

        epoch = request.get("epoch")
        expected = self._next_epoch(leader)
        if epoch != expected:
            raise PromotionRefused(f"the request is for epoch {epoch} but the next epoch is {expected}: sign again",
                                   field="epoch")
        tokens = request.get("approvals")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise PromotionRefused("approvals must be a list of approval tokens", field="approvals")
        staff = self.engine.components.get("staff")
        if staff is None or not staff.members:  # no staff identities: dev mode only (B4)
            if not self.staffless_ok:
                raise PromotionRefused(f"standby {self.node_id}: {STAFFLESS_REFUSED}", field="approvals")
            return []  # the operator's NATS credentials decide
        sigs = [parse_approval(t, f"approvals[{i}]") for i, t in enumerate(tokens)]
        now = time.time_ns()
        for sig in sigs:
            if not now < sig.expires_ns <= now + MAX_DECISION_TTL_NS:
                raise StaffRefused("not-expired", f"the signature of {sig.staff_id!r} is expired or valid for more than "
                                   f"{MAX_DECISION_TTL_NS // 10**9} s", field="approvals")
        return check_quorum(self.engine, PROMOTE_ACTION, promote_subject(self.target.stream, self.node_id, expected),
                            sigs, OPERATOR, field="approvals")

    def consider_promotion(self, leader: dict[str, Any] | None, revision: int) -> bool:
        """Answer a new promotion request for this node (KV `promote.NODE`): verified, it becomes
        the leader record (revision-checked against `revision`); refused, the request is marked
        refused with the reason. Returns whether this node just took the leadership."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = request_key(self.node_id)
        try:
            entry = self.link.call(self.kv.get(key))
        except KeyNotFoundError:
            return False
        if int(entry.revision) == self._request_rev:
            return False
        self._request_rev = judged = int(entry.revision)  # the request's revision: every answer to it names it
        request: Any = None
        # caught up first: the record is taken only once the grant passes where the fence will stand, after
        # every batch the old primary got in (its sequencer time), and with a margin before the approvals
        # expire for the batches it may still write until the fence lands (review of #21, 1). Outside the
        # refusals below: a replica that disagrees with the primary (JournalCorrupt, Refused) stops here as
        # it stops anywhere, never turned into a refused request it would follow on from (code review, s16)
        try:
            self.poll()
        except (Refused, JournalCorrupt) as err:  # the operator hears why (signed, for the request's nonce); it stops
            try:
                asked = untrusted.loads(entry.value, untrusted.MAX_REQUEST_BYTES, "the request")
            except untrusted.UnreadableValue:
                asked = None
            self._answer(key, asked, "refused", reason=f"standby {self.node_id} stopped: {err}")
            raise
        try:  # anyone with the operator's credential may write anything here: junk is a refused request
            try:  # bounded, every decoding error caught (F1: nested JSON raised RecursionError)
                request = untrusted.loads(entry.value, untrusted.MAX_REQUEST_BYTES, "the request")
            except untrusted.UnreadableValue as err:
                raise PromotionRefused(str(err), field="request") from None
            if not isinstance(request, dict):
                raise PromotionRefused(f"the request is a JSON {type(request).__name__}, not an object", field="request")
            if request.get("status") == WITHDRAWN:  # `promote` gave up (or --withdraw): said once, never acted on
                self._say_leadership(f"promotion request for epoch {bounded_int(request.get('epoch'))} (revision {judged}) "
                                     "was withdrawn by the operator's `replication promote` (it gave up waiting, was "
                                     "interrupted, or --withdraw): not acted on")
                return False
            if request.get("status") != "requested":
                return False  # an answer (ours), or not a request at all
            if bounded_int(request.get("epoch")) is None:
                raise PromotionRefused("epoch must be a whole number of at most 18 digits", field="epoch")
            approvers = self.verify_promotion(request, leader)
            approvals = normalised_approvals(request["approvals"])
            # the lease is the leader's when its record is genuine, else this standby's own URL's: nothing
            # is copied from a record that does not verify
            lease = leader.get("lease_ms", 0) if leader is not None and self._trusted(leader) else self.target.lease_ms
            record = {"epoch": request["epoch"], "node": self.node_id, "lease_ms": int(lease), "renewed_at_ns": time.time_ns(),
                      "renewal": 0, "approved_by": approvers, "approvals": approvals}
            nonce = request.get("nonce")
            if isinstance(nonce, str) and _NONCE.fullmatch(nonce):  # the request it answers: `promote` finds it
                record["nonce"] = nonce  # even when its answers were overwritten (second intruder review, R1)
            if self.peers is not None:
                reason = grant_refusal(self.engine, self.target.stream, self.node_id, int(request["epoch"]),
                                       fence_grant(record, self.target.lease_ms), take_overs=True,
                                       staffless_ok=self.staffless_ok)
                if reason:
                    raise PromotionRefused(f"at stream sequence {self.stream_seq}, where its fence would stand: {reason}",
                                           field="approvals")
            self._check_margin(request["approvals"], max(int(lease), self.target.lease_ms))
            # taken first, over the very revision judged: `promote` withdraws a request it gave up on the same way,
            # so one of the two writes fails, never both pass (a new user's check of #21: a request reported as
            # failed was taken a minute later by a standby started then, which deposed the healthy primary)
            if not self._take(key, request, judged):
                return False
            value = sign_leader(self.key, self.target.stream, record)
            self.link.call(self.kv.update("leader", value, last=revision) if revision else self.kv.create("leader", value))
        except KeyWrongLastSequenceError:
            reason = "the leader record changed while the request was checked: sign again for the new epoch"
        except RingfenceError as err:
            reason = str(err)
        except (ValueError, TypeError, OverflowError) as err:  # junk in a request: refused, the standby follows on
            reason = f"the request is not valid ({type(err).__name__})"
        except Exception as err:  # noqa: BLE001 - anything else while judging is a refusal too, never a dead standby
            _log.error("replication: promotion request %s (revision %d) could not be judged: %s", key, self._request_rev,
                       nats_failed(err))
            reason = f"the request could not be judged ({type(err).__name__})"
        else:
            self._answer(key, request, "accepted", approved_by=approvers, revision=judged)
            self._accepted = (key, request, judged, approvers)  # its verdict on the fence follows (`_tell_fenced`)
            self._say_leadership(f"promotion to epoch {record['epoch']} approved by "
                             f"{', '.join(approvers) or 'an operator (no staff registered)'}")
            return True
        self._answer(key, request, "refused", reason=reason, revision=judged)
        self._say_leadership(f"promotion refused: {reason[:MAX_REASON_CHARS]}")
        return False

    def _take(self, key: str, request: Any, judged: int) -> bool:
        """Write this standby's answer "taking" over the request at revision `judged` (revision-checked):
        True when written; False when the key changed since (withdrawn by `promote`, or replaced: judged
        next), said once; a NATS failure goes up (a refusal)."""
        from nats.js.errors import KeyWrongLastSequenceError

        value = promotion_answer(self.key, self.target.stream, self.node_id, request, judged, "taking")
        try:
            self._request_rev = int(self.link.call(self.kv.update(key, value, last=judged)))
        except KeyWrongLastSequenceError:
            self._say_leadership(f"promotion request at revision {judged} changed before this standby took it (withdrawn "
                                 "by the operator, or replaced): not acted on")
            return False
        return True

    def _check_margin(self, tokens: Sequence[str], lease_ms: int) -> None:
        """`PromotionRefused` when an approval expires within `PROMOTION_MARGIN_NS` plus twice `lease_ms`
        of the later of this machine's clock and the replica's sequencer time, naming the approval and the
        time left and needed (no staff registered: no approvals to expire)."""
        from ..staff.decisions import parse_approval

        staff = self.engine.components.get("staff")
        if staff is None or not staff.members:
            return
        now = max(time.time_ns(), int(self.engine.now_ns))
        needed = PROMOTION_MARGIN_NS + 2 * lease_ms * 10**6
        for i, token in enumerate(tokens):
            sig = parse_approval(token, f"approvals[{i}]")
            left = sig.expires_ns - now
            if left < needed:
                raise PromotionRefused(
                    f"the approval of {sig.staff_id!r} expires in {max(left, 0) // 10**6} ms (by the later of this standby's "
                    f"clock and the sequencer time at journal sequence {self.engine.last_seq}), less than the "
                    f"{needed // 10**6} ms a promotion needs for its fence to land before the old primary's last "
                    "batches pass that expiry: sign again with a longer --ttl-s", field="approvals")

    def _tell_fenced(self, failed: str = "", *, unknown: bool = False) -> None:
        """The promotion request's final answer, once the fence is in (status `fenced`), could not be
        published (`failed`, with the reason), or may or may not be in (`unknown`: NATS failed or the
        ack was not the stream's): `replication promote` waits for it, not for the record."""
        accepted, self._accepted = self._accepted, None
        if accepted is None:
            return
        key, request, revision, approvers = accepted
        status = "unknown" if unknown else "failed" if failed else "fenced"
        self._answer(key, request, status, reason=failed, approved_by=approvers, revision=revision)

    def _answer(self, key: str, request: Any, status: str, *, reason: str = "", approved_by: Sequence[str] = (),
                revision: int | None = None) -> None:
        """Write this standby's signed answer (`promotion_answer`) over the request it judged. A failed
        write is one log line: the standby keeps following (intruder review of session 16, F1: an answer
        the bucket refused killed it, on every restart)."""
        from nats.js.errors import KeyWrongLastSequenceError

        value = promotion_answer(self.key, self.target.stream, self.node_id, request,
                                 self._request_rev if revision is None else revision, status, reason, approved_by)
        try:  # over the entry last seen only: a newer request written meanwhile is judged next, not overwritten
            self._request_rev = int(self.link.call(self.kv.update(key, value, last=self._request_rev)))
        except KeyWrongLastSequenceError:  # someone wrote the key since this standby last read it
            _log.warning("replication: promotion request %s changed before this standby's answer (%s) was written; "
                         "the answer is not written over it", key, status)
        except Exception as err:  # noqa: BLE001 - the answer is for the operator; following goes on
            _log.error("replication: the answer to promotion request %s (%s) was not written: %s", key, status,
                       nats_failed(err))

    def _trusted(self, leader: Mapping[str, Any]) -> bool:
        """Whether `leader` carries the valid signature of the node it names, by the peers file (False
        without one, for a node not in it, and for an unreadable record)."""
        public = None if self.peers is None or leader.get("unreadable") else self.peers.get(str(leader.get("node")))
        return public is not None and leader_signature_ok(leader, self.target.stream, public)

    def _observe(self, leader: dict[str, Any], revision: int) -> None:
        """A verified leader record at a new revision: a renewal when its `lease_key` is above every
        one seen (its lease runs from now), else a replay of an older genuine record: ignored,
        reported once per revision (intruder review of #21, R2)."""
        key = lease_key(leader)
        if key > self._freshest:
            self._freshest, self._freshest_record, self._fresh_at = key, leader, time.monotonic()
            return
        if revision != self._replay_seen:
            self._replay_seen = revision
            why = (f"leader record at revision {revision} (node {leader.get('node')!r}, epoch {key[0]}, renewal "
                   f"{key[2] if key[1] else 'none'}) is not newer than one already seen (epoch {self._freshest[0]}, renewal "
                   f"{self._freshest[2] if self._freshest[1] else 'none'}): a replayed record; its lease is ignored")
            _log.critical("replication: %s", why)
            self.on_progress(f"standby {self.node_id}: {why}")

    def _maybe_take_over(self, leader: dict[str, Any], revision: int) -> None:
        """With auto_promote: the lease of the newest *verified* leader record (`_observe`) went 2 x
        lease_ms unrenewed, so claim the next epoch. A replayed older record neither renews that
        lease nor starts one of its own. A record that does not verify against the peers file (forged, unsigned,
        naming a node not in it) has no lease: alerted once per revision, never taken over, and nothing
        of it is copied. Without a peers file there is no automatic take-over at all (intruder review
        of #21, I1: one unsigned KV write would otherwise make a standby depose a primary)."""
        from nats.js.errors import KeyWrongLastSequenceError

        if not self.target.auto_promote:
            return
        if self.peers is None or not self._trusted(leader):
            if revision != self._untrusted_seen:
                self._untrusted_seen = revision
                why = ("no peers file to verify it with: auto_promote needs --peers" if self.peers is None else
                       f"it does not carry the valid signature of node {leader.get('node')!r} from the peers file (forged)")
                _log.critical("replication: leader record at revision %d (node %r, epoch %r) is not verified: %s; "
                              "this standby will not take the leadership over on its lease", revision, leader.get("node"),
                              leader.get("epoch"), why)
                self.on_progress(f"standby {self.node_id}: leader record at revision {revision} not verified ({why}): "
                                 "no automatic take-over; promotion needs `ringfence replication promote`")
            return
        fresh = self._freshest_record
        if fresh is None or fresh.get("node") == self.node_id:
            return
        lease_ms = int(fresh.get("lease_ms", 0))
        if not lease_ms or time.monotonic() - self._fresh_at < 2 * lease_ms / 1000:
            return
        if int(fresh["epoch"]) < max(self.memory.highest(), self.fence_epoch):
            return  # an old genuine record put back: its lease ended with its epoch
        if self._leases.get(self.fence_epoch) == 0:  # every node would refuse the take-over's fence (`grant_refusal`)
            if revision != self._untrusted_seen:
                self._untrusted_seen = revision
                why = (f"the lease of {fresh['node']} expired, but its epoch {self.fence_epoch} was opened without a lease "
                       "(its fence declares lease_ms 0: a primary restarted with lease_ms since): no automatic take-over; "
                       "promotion needs `ringfence replication promote`")
                _log.critical("replication: %s", why)
                self.on_progress(f"standby {self.node_id}: {why}")
            return
        record = {"epoch": self._next_epoch(leader), "node": self.node_id, "lease_ms": lease_ms,
                  "renewed_at_ns": time.time_ns(), "renewal": 0, "took_over_from": fresh["node"]}
        try:
            self.link.call(self.kv.update("leader", sign_leader(self.key, self.target.stream, record), last=revision))
        except KeyWrongLastSequenceError:
            return  # renewed or taken meanwhile: keep following
        self._say_leadership(f"the lease of {leader['node']} expired; claimed epoch {record['epoch']}")

    def _next_epoch(self, leader: dict[str, Any] | None) -> int:
        """The epoch a claim of this standby takes: above the leader record's, every fence it read,
        the stream's newest message (when signed by a peer) and its own memory (epochs.py). The leader
        record counts only when it verifies: a forged epoch must not raise every later one (F3)."""
        genuine = leader if self.peers is None or (leader is not None and self._trusted(leader)) else None
        return epoch_above(self.link, self.memory, genuine, fence_epoch=self.fence_epoch, peers=self.peers)

    def hand_over(self) -> tuple[Any, tuple[int, bytes, Path | None, int], Any]:
        """After promotion: stop following and hand the engine, the journal writer's position and
        the data directory's lock (still held) to the node that serves next (`Node.adopt`)."""
        position = self.writer.position()
        try:
            self.writer.close()
            self.link.close()
        except BaseException:
            self.lock.release()
            raise
        lock, self.lock = self.lock, None
        return self.engine, position, lock

    def close(self) -> None:
        if self.lock is None:  # handed over
            return
        try:
            self.writer.close()
            self.link.close()
        finally:
            self.lock.release()

