"""The `/por` page of a running exchange: the newest proof, coverage per asset over time (a
server-rendered SVG chart, no script, nothing loaded from the network), the shield fund rule and
every kept proof with its downloadable files.

Invariants: no float — chart coordinates are integer arithmetic on basis points; every value
that came from a file is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Mapping, Sequence

from ..i18n import N_
from .report import render_shield

__all__ = ["render_por_page", "coverage_chart_svg"]

MAX_POINTS = 200  # the chart shows the newest proofs; the table lists all kept ones
_W, _H, _LEFT, _TOP, _BOTTOM, _RIGHT = 720, 280, 56, 16, 36, 120
_COLOURS = ("#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#c62828", "#5d4037", "#455a64")


def _english(message: str, **params: Any) -> str:
    return message % params if params else message


def _pct(bp: int) -> str:
    return f"{bp // 100}.{bp % 100:02d}%"


def coverage_chart_svg(proofs: Sequence[Mapping[str, Any]], _: Callable[..., str] | None = None) -> str:
    """Coverage (reserves / liabilities) per asset, one line each, over the newest proofs (`_` translates)."""
    _ = _ or _english
    points = list(proofs)[-MAX_POINTS:]
    series: dict[str, list[tuple[int, int, Mapping[str, Any]]]] = {}
    for i, proof in enumerate(points):
        for row in proof["assets"]:
            if row.get("coverage_bp") is not None:
                series.setdefault(row["asset"], []).append((i, int(row["coverage_bp"]), proof))
    if not series:
        return ('<p id="coverage-chart-empty">' + html.escape(_("No reserve evidence in any kept proof yet: coverage over time "
                                                               "cannot be drawn (liabilities are proven; reserves are not).")) + "</p>")
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
             'aria-label="' + html.escape(_("coverage per asset over time")) + '">',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(0, 5):
        bp = top_bp * k // 4
        parts.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(bp)}" y2="{y(bp)}" stroke="#eee"/>'
                     f'<text x="{_LEFT - 6}" y="{y(bp) + 4}" text-anchor="end">{_pct(bp)}</text>')
    parts.append(f'<line class="full-coverage" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(10_000)}" y2="{y(10_000)}" '
                 'stroke="#c62828" stroke-dasharray="4 3"><title>' + html.escape(_("full coverage: reserves equal liabilities")) + '</title></line>')
    first, last = (html.escape(_("proof #%(n)s", n=p["n"])) for p in (points[0], points[-1]))
    parts.append(f'<text x="{_LEFT}" y="{_H - 8}">{first}</text>'
                 f'<text x="{_LEFT + plot_w}" y="{_H - 8}" text-anchor="end">{last}</text>')
    for k, (asset, pts) in enumerate(sorted(series.items())):
        colour = _COLOURS[k % len(_COLOURS)]
        name = html.escape(asset)
        coords = " ".join(f"{x(i)},{y(bp)}" for i, bp, _ in pts)
        parts.append(f'<polyline class="coverage-line" data-asset="{name}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{coords}"/>')
        for i, bp, proof in pts:
            parts.append(f'<circle class="coverage-point" data-asset="{name}" data-n="{proof["n"]}" cx="{x(i)}" '
                         f'cy="{y(bp)}" r="3" fill="{colour}"><title>' + html.escape(_(
                             "%(asset)s proof #%(n)s (%(time)s): %(coverage)s", asset=asset, n=proof["n"],
                             time=proof["published_at"], coverage=_pct(bp))) + '</title></circle>')
        ly = _TOP + 14 + 16 * k
        parts.append(f'<rect x="{_W - _RIGHT + 12}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text class="legend" x="{_W - _RIGHT + 28}" y="{ly}">{name} {_pct(pts[-1][1])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(row: Mapping[str, Any], _: Callable[..., str]) -> str:
    if row.get("coverage_bp") is None:
        return _("no reserve evidence") if row.get("reserves_minor") is None else _("no liabilities")
    return _pct(int(row["coverage_bp"]))


COVERAGE_OF = N_("%(asset)s coverage")


def render_por_page(history: Mapping[str, Any], latest: Mapping[str, Any], settings: Mapping[str, Any],
                    _: Callable[..., str] = _english, lang: str = "en", direction: str = "ltr",
                    fmt_int: Callable[[int], str] = str, fmt_time: Callable[[str], str] = str) -> str:
    """The page in one language (`_` from `ringfence.i18n.gettext_for`; English by default)."""
    esc = html.escape
    proofs = history["proofs"]
    head = proofs[-1]
    assets = sorted({row["asset"] for p in proofs for row in p["assets"]})
    rows = []
    for p in reversed(proofs):
        by_asset = {r["asset"]: r for r in p["assets"]}
        cells = "".join(f"<td class=num>{esc(_cell(by_asset[a], _)) if a in by_asset else ''}</td>" for a in assets)
        links = " ".join(f'<a href="/por/history/{p["n"]}/{esc(f)}">{esc(f)}</a>' for f in p["files"])
        shield = {True: _("ok"), False: _("ALERT"), None: _("n/a") if not p["shield_alert"] else _("ALERT (unpriced)")}[p["shield_ok"]]
        rows.append(f'<tr data-n="{p["n"]}"><td>{p["n"]}</td><td class="published" title="{esc(p["published_at"])}">'
                    f'{esc(fmt_time(p["published_at"]))}</td><td><code>{esc(p["position"])}'
                    f'</code></td><td><code title="{esc(p["root_hash"])}">{esc(p["root_hash"][:16])}…</code></td>'
                    f"{cells}<td>{esc(shield)}</td><td>{links}</td></tr>")
    no_evidence = esc(_("No reserve evidence."))
    evidence = ("" if head["reserves_proven"] else
                f'<p id="no-evidence"><strong>{no_evidence}</strong> {esc(head["reserves_note"])}</p>')
    sources = ", ".join(settings.get("reserve_sources", ())) or _("none")
    n = head["n"]
    latest_text = esc(_("Newest proof #%(n)s, published %(time)s at journal position %(position)s; liabilities root:",
                        n=n, time=fmt_time(head["published_at"]), position=head["position"]))
    counts_text = esc(_("%(accounts)s accounts, %(leaves)s leaves.", accounts=fmt_int(head["accounts"]), leaves=fmt_int(head["leaf_count"])))
    schedule_text = esc(_("A proof is published every %(seconds)s s; %(kept)s kept. Reserve sources: %(sources)s.",
                          seconds=str(settings.get("every_s", "?")), kept=fmt_int(len(proofs)), sources=sources))
    t = [esc(x) for x in (
        _("Proof of solvency"),
        _("Proof of solvency"),
        _("Check your own balance with the offline verifier"),
        _("Coverage per asset over time"),
        _("Coverage = reserves ÷ liabilities, floored to two decimals, from each proof's own evidence: ownership signed by the wallets' signers for that snapshot and balances at one height per chain."),
        _("All kept proofs"),
        _("published (UTC)"),
        _("position"),
        _("root"),
        _("shield rule"),
        _("files"),
    )]
    return f"""<!doctype html>
<html lang="{esc(lang)}" dir="{esc(direction)}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringfence — {t[0]} — #{n}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}
.num{{text-align:end;font-variant-numeric:tabular-nums}}code{{font-size:.85em}}
.rule-alert{{color:#b71c1c}}.rule-ok{{color:#1b5e20}}svg,code{{direction:ltr}}
</style></head><body>
<h1>{t[1]}</h1>
<p id="latest">{latest_text} <code id="liabilities-root" dir="ltr">{esc(head['root_hash'])}</code>
({counts_text}) <a href="/por/history/{n}/report.html">report.html</a> ·
<a href="/por/verify">{t[2]}</a></p>
<p id="schedule">{schedule_text}</p>
{evidence}
<h2>{t[3]}</h2>
{coverage_chart_svg(proofs, _)}
<p>{t[4]}</p>
{render_shield(latest.get('shield'), _)}
<h2>{t[5]}</h2>
<table id="history"><thead><tr><th>#</th><th>{t[6]}</th><th>{t[7]}</th><th>{t[8]}</th>
{''.join(f'<th>{esc(_(COVERAGE_OF, asset=a))}</th>' for a in assets)}<th>{t[9]}</th><th>{t[10]}</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
</body></html>
"""
