"""`serve --demo`'s genesis staff: six members, two of them operators (quorum 2), keys in DIR/demo-staff.json.

The demo is a development setup: the server process creates the six staff keys (in production
every member creates their own key and only the public half reaches the server) and writes them,
with the ids and roles, to `DIR/demo-staff.json` with mode 0600, so the console works at once:
`ringfence halts lift ID --key DIR/demo-staff.json#ada --key DIR/demo-staff.json#ben ...`. The three
policy admins (pat, pia, pol) let the custody runtime propose and approve the demo's withdrawal
policy with signed decisions (`CustodyRuntime.bootstrap`), as three people would with
`ringfence policy propose|approve`. Idempotent: a register that exists is left alone (the file from
the first start still holds its keys).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..nodekey import write_private
from ..owned import read_own_file
from .decisions import StaffKey
from .desk import StaffDesk
from .state import staff_of

__all__ = ["DEMO_STAFF", "DEMO_QUORUM", "DEMO_POLICY_ADMINS", "seed_demo_staff", "demo_staff_keys"]

#: Operator, approver and analyst covered; ada and ben are operators, so a 2-of-2 operator quorum works;
#: ada and cy are the two approvers a large withdrawal needs. pat, pia and pol are policy admins only
#: (a policy admin may not also approve or sign): one proposes, the two others approve.
DEMO_STAFF: dict[str, list[str]] = {"ada": ["operator", "approver"], "ben": ["operator", "analyst"],
                                    "cy": ["approver", "analyst"], "pat": ["policy_admin"],
                                    "pia": ["policy_admin"], "pol": ["policy_admin"]}
#: The demo's policy admins (they propose and approve `serve --demo`'s withdrawal policy).
DEMO_POLICY_ADMINS = ("pat", "pia", "pol")
DEMO_QUORUM = 2


def _write_0600(path: Path, payload: dict[str, Any]) -> None:
    """A new file of this user's, 0600 (nodekey.write_private: never written through a `.tmp` or a link
    someone else put there)."""
    write_private(path, (json.dumps(payload, indent=2) + "\n").encode())


def seed_demo_staff(node: Any, data_dir: Path, identity_ctx: Any = None) -> dict[str, Any]:
    """Create the demo genesis quorum unless a register exists, and (with `identity_ctx`) each member's
    console login; returns what the console prints."""
    path = data_dir / "demo-staff.json"
    if staff_of(node.engine).members:
        if identity_ctx is not None:
            _add_demo_logins(path, identity_ctx)
        return {"file": str(path), "created": False, "staff": sorted(staff_of(node.engine).members)}
    keys = {s: StaffKey.generate(s) for s in DEMO_STAFF}
    _write_0600(path, {
        "quorum": DEMO_QUORUM,
        "note": "demo staff signing keys (development only); use with --key FILE#ID (e.g. --key DIR/demo-staff.json#ada)",
        "staff": [{"staff_id": s, "roles": DEMO_STAFF[s], "public_key": k.public_hex, "private_key": k.seed_hex}
                  for s, k in keys.items()],
    })
    node.execute(StaffDesk(keys, time.time_ns).genesis(DEMO_STAFF, DEMO_QUORUM))
    if identity_ctx is not None:
        _add_demo_logins(path, identity_ctx)
    return {"file": str(path), "created": True, "staff": sorted(DEMO_STAFF)}


def _add_demo_logins(path: Path, identity_ctx: Any) -> None:
    """Each member of the file gets an identity account for the console (`identity/staff_logins.py`):
    `"login": {"email", "password", "totp_secret"}` in the member's entry (sign in at /login, then the
    TOTP code at /login/2fa; a passkey can be added in the security centre). Members that have one
    keep it."""
    from ..identity.staff_logins import create_staff_login

    if not path.exists():
        return
    payload = json.loads(read_own_file(path, "--data", "demo staff key file"))  # one another user planted is refused
    changed = False
    for entry in payload.get("staff", []):
        if "login" in entry:
            continue
        login = create_staff_login(identity_ctx, entry["staff_id"], f"{entry['staff_id']}@staff.demo.ringfence.local")
        if login is not None:
            entry["login"] = {"email": login.email, "password": login.password, "totp_secret": login.totp_secret}
            changed = True
    if changed:
        payload["note"] = (payload.get("note", "") + "; console logins: sign in at /login with login.email and "
                           "login.password, then the TOTP code of login.totp_secret, and open /admin")
        _write_0600(path, payload)


def demo_staff_keys(data_dir: Path, staff_ids: Any) -> dict[str, StaffKey]:
    """The keys of `staff_ids` that DIR/demo-staff.json holds (those it lacks are left out)."""
    from ..errors import ValidationError
    from .decisions import read_key_file

    path = data_dir / "demo-staff.json"
    if not path.is_file():
        return {}
    keys = {}
    for staff_id in staff_ids:
        try:
            keys[staff_id] = read_key_file(path, staff_id)
        except ValidationError:
            continue
    return keys
