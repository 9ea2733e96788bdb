"""The `/por` page of a running exchange: the newest proof, coverage per asset over time (a
server-rendered SVG chart, no script, nothing loaded from the network), the shield fund rule and
every kept proof with its downloadable files.

Invariants: no float — chart coordinates are integer arithmetic on basis points; every value
that came from a file is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from .report import render_shield

__all__ = ["render_por_page", "coverage_chart_svg"]

MAX_POINTS = 200  # the chart shows the newest proofs; the table lists all kept ones
_W, _H, _LEFT, _TOP, _BOTTOM, _RIGHT = 720, 280, 56, 16, 36, 120
_COLOURS = ("#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#455a64")


def _pct(bp: int) -> str:
    return f"{bp // 100}.{bp % 100:02d}%"


def coverage_chart_svg(proofs: Sequence[Mapping[str, Any]]) -> str:
    """Coverage (reserves / liabilities) per asset, one line each, over the newest proofs."""
    points = list(proofs)[-MAX_POINTS:]
    series: dict[str, list[tuple[int, int, Mapping[str, Any]]]] = {}
    for i, proof in enumerate(points):
        for row in proof["assets"]:
            if row.get("coverage_bp") is not None:
                series.setdefault(row["asset"], []).append((i, int(row["coverage_bp"]), proof))
    if not series:
        return ('<p id="coverage-chart-empty">No reserve evidence in any kept proof yet: coverage over time '
                'cannot be drawn (liabilities are proven; reserves are not).</p>')
    top_bp = max(10_000, max(bp for s in series.values() for _, bp, _ in s))
    top_bp = -(-top_bp * 11 // 10 // 1000) * 1000  # headroom, rounded up to 10 %
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    span = max(len(points) - 1, 1)

    def x(i: int) -> int:
        return _LEFT + i * plot_w // span

    def y(bp: int) -> int:
        return _TOP + plot_h - min(bp, top_bp) * plot_h // top_bp

    parts = [f'<svg id="coverage-chart" xmlns="http://www.w3.org/2000/svg" role="img" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11" '
             'aria-label="coverage per asset over time">',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(0, 5):
        bp = top_bp * k // 4
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(bp)}" y2="{y(bp)}" stroke="#eee"/>'
                     f'<text x="{_LEFT - 6}" y="{y(bp) + 4}" text-anchor="end">{_pct(bp)}</text>')
    parts.append(f'<line class="full-coverage" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(10_000)}" y2="{y(10_000)}" '
                 'stroke="#c62828" stroke-dasharray="4 3"><title>100 % coverage</title></line>')
    parts.append(f'<text x="{_LEFT}" y="{_H - 8}">proof #{html.escape(str(points[0]["n"]))}</text>'
                 f'<text x="{_LEFT + plot_w}" y="{_H - 8}" text-anchor="end">proof #{html.escape(str(points[-1]["n"]))}</text>')
    for k, (asset, pts) in enumerate(sorted(series.items())):
        colour = _COLOURS[k % len(_COLOURS)]
        name = html.escape(asset)
        coords = " ".join(f"{x(i)},{y(bp)}" for i, bp, _ in pts)
        parts.append(f'<polyline class="coverage-line" data-asset="{name}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{coords}"/>')
        for i, bp, proof in pts:
            parts.append(f'<circle class="coverage-point" data-asset="{name}" data-n="{proof["n"]}" cx="{x(i)}" '
                         f'cy="{y(bp)}" r="3" fill="{colour}"><title>{name} proof #{proof["n"]} '
                         f'({html.escape(proof["published_at"])}): {_pct(bp)}</title></circle>')
        ly = _TOP + 14 + 16 * k
        parts.append(f'<rect x="{_W - _RIGHT + 12}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text class="legend" x="{_W - _RIGHT + 28}" y="{ly}">{name} {_pct(pts[-1][1])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(row: Mapping[str, Any]) -> str:
    if row.get("coverage_bp") is None:
        return "no reserve evidence" if row.get("reserves_minor") is None else "no liabilities"
    return _pct(int(row["coverage_bp"]))


def render_por_page(history: Mapping[str, Any], latest: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    esc = html.escape
    proofs = history["proofs"]
    head = proofs[-1]
    assets = sorted({row["asset"] for p in proofs for row in p["assets"]})
    rows = []
    for p in reversed(proofs):
        by_asset = {r["asset"]: r for r in p["assets"]}
        cells = "".join(f"<td class=num>{esc(_cell(by_asset[a])) if a in by_asset else ''}</td>" for a in assets)
        links = " ".join(f'<a href="/por/history/{p["n"]}/{esc(f)}">{esc(f)}</a>' for f in p["files"])
        shield = {True: "ok", False: "ALERT", None: "n/a" if not p["shield_alert"] else "ALERT (unpriced)"}[p["shield_ok"]]
        rows.append(f'<tr data-n="{p["n"]}"><td>{p["n"]}</td><td>{esc(p["published_at"])}</td><td><code>{esc(p["position"])}'
                    f'</code></td><td><code title="{esc(p["root_hash"])}">{esc(p["root_hash"][:16])}…</code></td>'
                    f"{cells}<td>{esc(shield)}</td><td>{links}</td></tr>")
    evidence = ("" if head["reserves_proven"] else
                f'<p id="no-evidence"><strong>No reserve evidence.</strong> {esc(head["reserves_note"])}</p>')
    sources = ", ".join(settings.get("reserve_sources", ())) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringfence proof of solvency — proof #{head['n']}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
.num{{text-align:right;font-variant-numeric:tabular-nums}}code{{font-size:.85em}}
.rule-alert{{color:#b71c1c}}.rule-ok{{color:#1b5e20}}
</style></head><body>
<h1>Proof of solvency</h1>
<p id="latest">Newest proof <strong>#{head['n']}</strong>, published {esc(head['published_at'])} at journal position
<code>{esc(head['position'])}</code>; liabilities root <code id="liabilities-root">{esc(head['root_hash'])}</code>
({head['accounts']} accounts, {head['leaf_count']} leaves). Full report: <a href="/por/history/{head['n']}/report.html">report.html</a>;
check your own balance with the <a href="/por/verify">offline verifier</a>.</p>
<p id="schedule">A proof is published every {esc(str(settings.get('every_s', '?')))} s; {len(proofs)} kept.
Reserve sources: {esc(sources)}.</p>
{evidence}
<h2>Coverage per asset over time</h2>
{coverage_chart_svg(proofs)}
<p>Coverage = reserves ÷ liabilities, floored to two decimals, from each proof's own evidence: ownership signed by the
wallets' signers for that snapshot and balances at one height per chain.</p>
{render_shield(latest.get('shield'))}
<h2>All kept proofs</h2>
<table id="history"><thead><tr><th>#</th><th>published (UTC)</th><th>position</th><th>root</th>
{''.join(f'<th>{esc(a)} coverage</th>' for a in assets)}<th>shield rule</th><th>files</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
</body></html>
"""
