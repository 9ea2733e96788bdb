// The risk page: GET /v1/risk every 2 s (public; no owners), and a funding countdown every second.
"use strict";
(async () => {
  const { _ } = window.rfI18n;  // the page's language (docs/i18n.md); the numbers stay as the API writes them
  let view = null;
  const $ = (id) => document.getElementById(id);

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c === null || c === undefined ? "—" : String(c);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(tbodyOf, rows) {
    const body = $(tbodyOf).querySelector("tbody");
    body.replaceChildren(...rows.map(row));
  }

  function countdown(ms) {
    const left = Math.max(0, Math.floor((ms - Date.now()) / 1000));
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    return `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}`;
  }

  // rates are decimal strings (8 decimals): shown as percentages without floats
  function percent(rate) {
    const neg = rate.startsWith("-");
    const [i, f = ""] = rate.replace("-", "").split(".");
    const digits = (i + f.padEnd(8, "0")).replace(/^0+(?=\d)/, "");
    const padded = digits.padStart(7, "0");
    const whole = padded.slice(0, -6).replace(/^0+(?=\d)/, "");
    return (neg ? "-" : "") + whole + "." + padded.slice(-6, -2) + " %";
  }

  function render() {
    if (view === null) return;
    fill("segments", view.segments.map((s) => [s.segment, s.insurance_fund.map((f) => `${f.balance} ${f.asset}`).join(", ") || "0"]));
    fill("markets", view.markets.map((m) => [m.symbol, m.markPrice, m.indexPrice === null ? null : `${m.indexPrice} (${m.indexSources})`,
      m.openInterest, `${m.openInterestValue} ${m.marginAsset}`, `${m.longAccounts} / ${m.shortAccounts}`,
      percent(m.lastFundingRate), countdown(m.nextFundingTime)]));
    fill("near-liquidation", view.nearLiquidation.map((p) => [p.symbol, p.side, "≈ " + p.notionalApprox, p.markPrice,
      p.marginType, p.marginRatioBand + " %"]));
    $("position-count").textContent = _("%(n)s open positions.", { n: view.positions });
    $("as-of").textContent = _("as of sequence %(seq)s", { seq: view.asOfSeq });
  }

  async function load() {
    try {
      const r = await fetch("/v1/risk", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      view = await r.json();
      $("risk-error").hidden = true;
      render();
    } catch (err) {
      $("risk-error").textContent = _("Could not load the risk view: %(error)s", { error: err.message });
      $("risk-error").hidden = false;
    }
  }

  await window.rfI18n.ready;  // the catalogue first: everything below draws text
  load();
  setInterval(load, 2000);
  setInterval(render, 1000);
})();
