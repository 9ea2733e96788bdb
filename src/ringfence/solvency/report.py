"""The coverage report: reserves vs liabilities per asset, as reserves.json and a static report.html.

Job: combine the liabilities root (what the exchange owes users), the reserves result (what proven
addresses hold at the snapshot heights) and the shield fund (shown separately, never mixed into the
user liabilities) into one machine-readable document and one human page with an inline SVG chart.

Invariants: no float anywhere near an amount — ratios are integer arithmetic rendered as decimal
strings (floored, two decimals); amounts are minor-unit integers in the JSON (as decimal strings)
and formatted with the asset's decimals on the page; the page loads nothing from the network.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Mapping, Sequence

from ..money import MAX_DECIMALS, format_amount
from .reserves import ReservesResult
from .snapshot import AssetSpec

__all__ = ["REPORT_VERSION", "asset_decimals", "coverage_percent", "build_report", "render_html", "render_shield"]

REPORT_VERSION = "ringfence-por-reserves-v1"


def coverage_percent(reserves_minor: int, liabilities_minor: int) -> str | None:
    """reserves / liabilities as a percentage with two decimals, floored ("163.25"); None if no liabilities."""
    if liabilities_minor <= 0:
        return None
    basis_points = reserves_minor * 10000 // liabilities_minor
    return f"{basis_points // 100}.{basis_points % 100:02d}"


def build_report(root_document: Mapping[str, Any], assets: Sequence[AssetSpec],
                 reserves: ReservesResult | None, shield_fund_minor: Mapping[str, int],
                 debts_minor: Mapping[str, int], position: str) -> dict[str, Any]:
    """The reserves.json document."""
    liabilities = dict(zip(root_document["assets"], (int(s) for s in root_document["root"]["sums"])))
    rows = []
    codes = [a.code for a in assets]
    extra = [c for c in (reserves.reserves_minor if reserves else {}) if c not in codes]
    for spec in list(assets) + [AssetSpec(c, 0) for c in extra]:
        code = spec.code
        held = reserves.reserves_minor.get(code, 0) if reserves else 0
        proven = reserves is not None and code in reserves.reserves_minor
        owed = liabilities.get(code, 0)
        shield = int(shield_fund_minor.get(code, 0))
        rows.append({
            "asset": code,
            "decimals": spec.decimals,
            "reserves_minor": str(held),
            "liabilities_minor": str(owed),
            "shield_fund_minor": str(shield),
            "debts_minor": str(int(debts_minor.get(code, 0))),
            # No evidence (none at all, or no address claimed for this asset) means "not proven",
            # not "0% covered".
            "coverage_percent": coverage_percent(held, owed) if proven else None,
            "coverage_excluding_shield_fund_percent":
                coverage_percent(max(held - shield, 0), owed) if proven else None,
        })
    return {
        "version": REPORT_VERSION,
        "snapshot_id": root_document["snapshot_id"],
        "position": position,
        "liabilities_root": root_document["root"]["hash"],
        "leaf_count": root_document["root"]["leaf_count"],
        "reserves_proven": reserves is not None,
        "chain_heights": dict(reserves.heights) if reserves else {},
        "assets": rows,
        "addresses": [a.to_json() for a in reserves.addresses] if reserves else [],
    }


_BAR_WIDTH_PX = 360
_COLOURS = {"reserves": "#2e7d32", "liabilities": "#c62828", "shield fund": "#1565c0"}


def _chart_svg(rows: list[dict[str, Any]]) -> str:
    """Per asset, bars scaled to that asset's largest figure (assets have different units)."""
    row_h, bar_h, label_w = 78, 18, 90
    height = row_h * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="reserves and liabilities per asset" '
             f'width="{label_w + _BAR_WIDTH_PX + 150}" height="{height}" font-family="sans-serif" font-size="12">']
    for i, row in enumerate(rows):
        values = {"reserves": int(row["reserves_minor"]), "liabilities": int(row["liabilities_minor"]),
                  "shield fund": int(row["shield_fund_minor"])}
        scale = max(max(values.values()), 1)
        y0 = 10 + i * row_h
        parts.append(f'<text x="0" y="{y0 + 30}" font-weight="bold">{html.escape(row["asset"])}</text>')
        for j, (name, value) in enumerate(values.items()):
            width = value * _BAR_WIDTH_PX // scale
            y = y0 + j * (bar_h + 4)
            parts.append(f'<rect x="{label_w}" y="{y}" width="{width}" height="{bar_h}" fill="{_COLOURS[name]}">'
                         f'<title>{name}: {html.escape(format_amount(value, row["decimals"], trim=True))}</title></rect>')
            parts.append(f'<text x="{label_w + width + 6}" y="{y + 13}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained report page (no scripts, no external resources)."""
    esc = html.escape
    body = []
    claimed = {a["asset"] for a in report["addresses"]}
    for row in report["assets"]:
        d = row["decimals"]
        cov = row["coverage_percent"]
        na = "n/a (no liabilities)" if report["reserves_proven"] and row["asset"] in claimed else "n/a (no reserves evidence)"
        body.append(
            "<tr>"
            f"<td>{esc(row['asset'])}</td>"
            f"<td class=num>{esc(format_amount(int(row['reserves_minor']), d, trim=True))}</td>"
            f"<td class=num>{esc(format_amount(int(row['liabilities_minor']), d, trim=True))}</td>"
            f"<td class=num>{esc(cov + '%') if cov is not None else na}</td>"
            f"<td class=num>{esc(format_amount(int(row['shield_fund_minor']), d, trim=True))}</td>"
            f"<td class=num>{esc(format_amount(int(row['debts_minor']), d, trim=True))}</td>"
            "</tr>"
        )
    heights = "".join(f"<li>{esc(c)}: block {h}</li>" for c, h in sorted(report["chain_heights"].items())) \
        or "<li>no reserves evidence was provided for this snapshot</li>"
    decimals = asset_decimals(report)

    def balance(a: Mapping[str, Any]) -> str:  # the amount, with the exact minor units on hover (reserves.json has them too)
        minor = esc(str(a["balance_minor"]))
        if a["asset"] not in decimals:
            return f"<td class=num>{minor} (minor units)</td>"
        amount = format_amount(int(a["balance_minor"]), decimals[a["asset"]], trim=True)
        return f'<td class=num title="{minor} minor units">{esc(amount)} {esc(a["asset"])}</td>'

    addresses = "".join(
        f"<tr><td>{esc(a['chain'])}</td><td>{esc(a['asset'])}</td><td><code>{esc(a['address'])}</code></td>"
        f"<td>{esc(a['type'])}</td><td>{esc(a['status'])}</td>{balance(a)}</tr>"
        for a in report["addresses"]
    )
    evidence_note = "" if report["reserves_proven"] else (
        '<p id="no-evidence"><strong>No reserve evidence</strong> for this snapshot: it proves liabilities only. '
        f'{esc(str(report.get("reserves_note", "")))}</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringfence proof of reserves — snapshot {esc(report['snapshot_id'][:16])}…</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
.num{{text-align:right;font-variant-numeric:tabular-nums}}code{{font-size:.85em}}
</style></head><body>
<h1>Proof of reserves</h1>
<p>Snapshot <code id="snapshot-id">{esc(report['snapshot_id'])}</code> at position <code>{esc(report['position'])}</code>.
Liabilities root <code id="liabilities-root">{esc(report['liabilities_root'])}</code>
({report['leaf_count']} leaves, including padding). Check your own balance is included with the
verifier page or <code>ringfence por verify</code>.</p>
{evidence_note}
<h2>Coverage per asset</h2>
<table id="coverage"><thead><tr><th>asset</th><th>reserves</th><th>liabilities</th><th>coverage</th>
<th>shield fund (separate)</th><th>user debts (not netted)</th></tr></thead><tbody>
{''.join(body)}
</tbody></table>
<p>Coverage = reserves ÷ liabilities, floored to two decimals. Liabilities are what the exchange owes
users, each user's balance floored at zero; debts are listed separately and never reduce them. The
shield fund is shown on its own line and is not a user liability.</p>
{_chart_svg(report['assets'])}
{render_shield(report.get("shield"))}
<h2>Chain heights</h2><ul id="heights">{heights}</ul>
<h2>Addresses</h2>
<table id="addresses"><thead><tr><th>chain</th><th>asset</th><th>address</th><th>proof</th><th>status</th>
<th>balance</th></tr></thead><tbody>{addresses}</tbody></table>
</body></html>
"""


def _english(message: str, **params: Any) -> str:
    return message % params if params else message


def asset_decimals(reserves_doc: Any) -> dict[str, int]:
    """{asset: decimals} from a published reserves.json (`/por/reserves.json`); {} when it says none.

    Only for display: the proof holds minor units, and the verdict never depends on this."""
    out: dict[str, int] = {}
    rows = reserves_doc.get("assets") if isinstance(reserves_doc, dict) else None
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(row.get("asset"), str):
            d = row.get("decimals")
            if isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DECIMALS:
                out[row["asset"]] = d
    return out


def render_shield(shield: Mapping[str, Any] | None, _: Callable[..., str] = _english) -> str:
    """The shield fund section: accrued in the ledger, in the on-chain vault, due, and CoinEx's rule.

    `_` translates (`ringfence.i18n.gettext_for`, the `/por` page); English by default (report.html)."""
    if not shield:
        return ""
    esc = html.escape
    alert = esc(_("ALERT:"))
    value_decimals = asset_decimals(shield).get(shield.get("value_asset"))
    if not shield["applicable"]:
        verdict = '<p id="shield-rule" class="rule-na">' + esc(_("Shield rule: not applicable (no hot or shield wallet is registered).")) + "</p>"
    elif shield["ok"] is not None and value_decimals is not None:
        # the values as amounts of the valuation asset (its decimals come from its own row); the exact
        # minor units stay in reserves.json (shield_value_minor, hot_value_minor)
        amounts = {"shield": format_amount(int(shield["shield_value_minor"]), value_decimals, trim=True),
                   "hot": format_amount(int(shield["hot_value_minor"]), value_decimals, trim=True), "asset": shield["value_asset"]}
        verdict = ('<p id="shield-rule" class="rule-ok">' + esc(_(
            "Shield rule holds: shield fund %(shield)s %(asset)s ≥ hot wallets %(hot)s %(asset)s.", **amounts)) + "</p>"
                   if shield["ok"] else
                   f'<p id="shield-rule" class="rule-alert"><strong>{alert}</strong> ' + esc(_(
                       "shield fund %(shield)s %(asset)s < hot wallets %(hot)s %(asset)s.", **amounts)) + "</p>")
    elif shield["ok"] is True:
        verdict = ('<p id="shield-rule" class="rule-ok">' + esc(_(
            "Shield rule holds: shield fund %(shield)s ≥ hot wallets %(hot)s (%(asset)s minor units).",
            shield=shield["shield_value_minor"], hot=shield["hot_value_minor"], asset=shield["value_asset"])) + "</p>")
    elif shield["ok"] is False:
        verdict = (f'<p id="shield-rule" class="rule-alert"><strong>{alert}</strong> ' + esc(_(
            "shield fund %(shield)s < hot wallets %(hot)s (%(asset)s minor units).",
            shield=shield["shield_value_minor"], hot=shield["hot_value_minor"], asset=shield["value_asset"])) + "</p>")
    else:
        verdict = (f'<p id="shield-rule" class="rule-alert"><strong>{alert}</strong> ' + esc(_(
            "the shield rule cannot be checked: no %(asset)s price for %(unpriced)s.",
            asset=shield["value_asset"], unpriced=", ".join(shield["unpriced"]))) + "</p>")
    rows = "".join(
        f"<tr><td>{esc(r['asset'])}</td>"
        + "".join(f"<td class=num>{esc(format_amount(int(r[k]), r['decimals'], trim=True))}</td>"
                  for k in ("accrued_minor", "vault_minor", "in_flight_minor", "due_minor", "hot_minor"))
        + "</tr>"
        for r in shield["assets"])
    heads = "".join(f"<th>{esc(h)}</th>" for h in (
        _("asset"), _("accrued (ledger)"), _("in the vault (on chain)"), _("sweep in flight"), _("due to sweep"), _("hot wallets")))
    title = esc(_("Shield fund"))
    return (f"<h2>{title}</h2>{verdict}<table id=\"shield\"><thead><tr>{heads}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")
