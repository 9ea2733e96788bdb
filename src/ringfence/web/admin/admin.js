// The staff console page: signs every admin request and every decision in the browser (WebCrypto
// Ed25519), with the member's key pasted into this page (never sent anywhere). The encodings are the
// server's: request_message (staff/requests.py) and decision_message (staff/decisions.py).
"use strict";

const REQUEST_DOMAIN = "ringfence/admin-request/v1";
const DECISION_DOMAIN = "ringfence/staff-decision/v1";
const TTL_NS = 600n * 1000000000n;
let me = null; // {staffId, key}

const $ = (id) => document.getElementById(id);
const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text) => new Uint8Array(text.match(/../g).map((h) => parseInt(h, 16)));
const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const randomHex = (n) => hex(crypto.getRandomValues(new Uint8Array(n)));

// Python's json.dumps(..., separators=(",", ":"), ensure_ascii=True) for strings, ints and lists.
// Integers that may pass 2**53 (amounts, nanoseconds) are given as {int: "digits"}.
function canonical(value) {
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  if (typeof value === "object" && value !== null && "int" in value) return String(value.int);
  if (typeof value === "number") return String(value);
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

async function importKey(seedHex, publicHex) {
  const jwk = { kty: "OKP", crv: "Ed25519", d: b64url(unhex(seedHex)), x: b64url(unhex(publicHex)), ext: false };
  return crypto.subtle.importKey("jwk", jwk, { name: "Ed25519" }, false, ["sign"]);
}

async function signHex(text) {
  return hex(await crypto.subtle.sign({ name: "Ed25519" }, me.key, new TextEncoder().encode(text)));
}

async function decisionToken(action, subject) {
  const nonce = randomHex(16);
  const expires = (BigInt(Date.now()) * 1000000n + TTL_NS).toString();
  const message = canonical([DECISION_DOMAIN, action, subject, me.staffId, nonce, { int: expires }]);
  return `${me.staffId}:${nonce}:${expires}:${await signHex(message)}`;
}

async function api(method, path, body) {
  const full = "/admin/v1" + path;
  const raw = body === undefined ? "" : JSON.stringify(body);
  const digest = hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(raw)));
  const ts = String(Date.now());
  const nonce = randomHex(16);
  const signature = await signHex([REQUEST_DOMAIN, method, full, "", ts, nonce, digest].join("\n"));
  const headers = { "X-RF-Staff": me.staffId, "X-RF-Timestamp": ts, "X-RF-Nonce": nonce, "X-RF-Signature": signature };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(full, { method, headers, body: body === undefined ? undefined : raw });
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.message || JSON.stringify(payload));
  return payload;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function control(td, kind, attrs) {
  const el = document.createElement(kind);
  Object.assign(el, attrs);
  td.appendChild(el);
  return el;
}

function say(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "error";
}

async function act(what, fn) {
  // the tables are redrawn before the outcome is shown: whatever is typed after the message
  // appears goes into rows that stay
  let message, ok;
  try {
    const result = await fn();
    [message, ok] = [`${what}: accepted (${result.accepted})`, true];
  } catch (err) {
    [message, ok] = [`${what}: ${err.message}`, false];
  }
  try {
    await refresh();
  } finally {
    say(message, ok);
  }
}

function renderHalts(view) {
  const body = $("halts").tBodies[0];
  body.replaceChildren();
  for (const h of view.active) {
    const row = body.insertRow();
    row.dataset.halt = h.halt_id;
    [h.halt_id, `${h.scope_kind}:${h.scope}`, h.level, String(h.raised_seq), h.reason].forEach((t) => cell(row, t));
    const td = cell(row, "");
    const reason = control(td, "input", { placeholder: "reason", className: "lift-reason", ariaLabel: `reason to lift ${h.halt_id}` });
    const others = control(td, "textarea", { placeholder: "other operators' approval tokens, one per line", rows: 2, className: "lift-approvals" });
    const mine = control(td, "button", { type: "button", textContent: "Sign my approval", className: "lift-sign" });
    const submit = control(td, "button", { type: "button", textContent: "Lift with approvals", className: "lift-submit" });
    const token = control(td, "output", { className: "lift-token" });
    mine.addEventListener("click", async () => {
      token.value = await decisionToken("halt.lift", [h.halt_id, reason.value, h.raised_seq]);
    });
    submit.addEventListener("click", () => act(`lift ${h.halt_id}`, async () => {
      const approvals = [await decisionToken("halt.lift", [h.halt_id, reason.value, h.raised_seq]),
        ...others.value.split(/\s+/).filter(Boolean)];
      return api("POST", `/halts/${encodeURIComponent(h.halt_id)}/lift`, { reason: reason.value, approvals });
    }));
  }
}

function renderWithdrawals(view) {
  const body = $("withdrawals").tBodies[0];
  body.replaceChildren();
  for (const w of view.withdrawals) {
    const row = body.insertRow();
    row.dataset.withdrawal = w.withdrawal_id;
    const valid = w.approvals.filter((a) => a.valid).map((a) => `${a.staff_id} (${a.role})`);
    [w.withdrawal_id, w.account_id, `${w.amount} ${w.asset}`, w.state, `${w.rule}: ${w.decision_reasons.join("; ")}`,
      `${valid.length}/${w.required_approvals} ${valid.join(", ")}`,
      w.user_history.map((x) => `${x.withdrawal_id} ${x.state}`).join(", ")].forEach((t) => cell(row, t));
    const td = cell(row, "");
    const amount = { int: w.amount_minor };
    const reason = control(td, "input", { placeholder: "reason", className: "decide-reason" });
    if (w.state === "awaiting_approvals") {
      const role = control(td, "input", { value: w.approver_roles[0] || "approver", className: "decide-role" });
      control(td, "button", { type: "button", textContent: "Approve", className: "approve" }).addEventListener("click", () =>
        act(`approve ${w.withdrawal_id}`, async () => api("POST", `/withdrawals/${encodeURIComponent(w.withdrawal_id)}/approve`, {
          role: role.value,
          decision: await decisionToken("withdrawal.approve", [w.withdrawal_id, role.value, w.asset, w.wallet, w.address, amount]),
        })));
      control(td, "button", { type: "button", textContent: "Reject", className: "reject" }).addEventListener("click", () =>
        act(`reject ${w.withdrawal_id}`, async () => api("POST", `/withdrawals/${encodeURIComponent(w.withdrawal_id)}/reject`, {
          reason: reason.value,
          decision: await decisionToken("withdrawal.reject", [w.withdrawal_id, w.asset, w.wallet, amount, reason.value]),
        })));
    } else {
      for (const [label, approve] of [["Approve", true], ["Reject", false]]) {
        control(td, "button", { type: "button", textContent: label, className: approve ? "approve" : "reject" }).addEventListener("click", () =>
          act(`${label.toLowerCase()} ${w.withdrawal_id}`, async () => api("POST", `/withdrawals/${encodeURIComponent(w.withdrawal_id)}/review`, {
            approve, reason: reason.value,
            decision: await decisionToken("withdrawal.manual_review",
              [w.withdrawal_id, w.asset, w.wallet, amount, approve ? "approve" : "reject", reason.value]),
          })));
      }
    }
  }
  const deposits = $("deposits").tBodies[0];
  deposits.replaceChildren();
  for (const d of view.deposits) {
    const row = deposits.insertRow();
    row.dataset.deposit = d.key;
    [`${d.chain}:${d.txid}:${d.index}`, d.account_id, `${d.amount} ${d.asset}`, `${d.score}: ${d.reasons.join("; ")}`,
      d.declaration].forEach((t) => cell(row, t));
    const td = cell(row, "");
    const reason = control(td, "input", { placeholder: "reason", className: "deposit-reason" });
    for (const kind of ["release", "freeze"]) {
      control(td, "button", { type: "button", textContent: kind[0].toUpperCase() + kind.slice(1), className: kind }).addEventListener("click", () =>
        act(`${kind} ${d.key}`, async () => api("POST", "/deposits/review", {
          chain: d.chain, txid: d.txid, index: d.index, decision_kind: kind, reason: reason.value,
          decision: await decisionToken("deposit.review", [d.key, { int: d.amount_minor }, kind, reason.value]),
        })));
    }
  }
}

// Monitoring (docs/monitoring.md): cases with their alerts, the analyst's workflow and signed actions.
async function renderMonitoring() {
  let alerts, cases;
  try {
    [alerts, cases] = await Promise.all([api("GET", "/alerts"), api("GET", "/cases")]);
  } catch (err) {  // alerts and cases describe customers: the server shows them to analysts only
    for (const id of ["alerts", "cases"]) {
      const tbody = $(id).tBodies[0];
      tbody.replaceChildren();
      cell(tbody.insertRow(), err.message);
    }
    return;
  }
  const abody = $("alerts").tBodies[0];
  abody.replaceChildren();
  for (const a of alerts.alerts) {
    const row = abody.insertRow();
    row.dataset.alert = String(a.alert_id);
    row.dataset.rule = a.rule;
    [String(a.alert_id), a.rule, a.severity, a.account_id, a.explanation, String(a.case_id)].forEach((t) => cell(row, t));
    // a behaviour rule's alert: its score and the features that drove it (milli-bits shown as bits)
    const bits = (mb) => `${Math.floor(mb / 1000)}.${Math.floor((mb % 1000) / 100)}`;
    const td = cell(row, a.score ? `${bits(a.score)} bits` : "");
    td.className = "alert-features";
    if (a.features && a.features.length) {
      const list = document.createElement("ul");
      for (const f of a.features) {
        const li = document.createElement("li");
        li.dataset.feature = f.feature;
        li.textContent = `${f.feature} ${bits(f.contribution)} — ${f.detail}`;
        list.appendChild(li);
      }
      td.appendChild(list);
    }
  }
  const body = $("cases").tBodies[0];
  body.replaceChildren();
  for (const c of cases.cases) {
    const row = body.insertRow();
    row.dataset.case = String(c.case_id);
    [String(c.case_id), c.account_id, c.severity, c.status + (c.closed_reason ? ` (${c.closed_reason})` : ""), c.assignee || "—",
      String(c.alerts)].forEach((t) => cell(row, t));
    const td = cell(row, "");
    if (c.status === "closed") continue;
    const note = control(td, "input", { placeholder: "note / reason", className: "case-note" });
    const path = `/cases/${c.case_id}`;
    control(td, "button", { type: "button", textContent: "Assign to me", className: "case-assign" }).addEventListener("click", () =>
      act(`assign case ${c.case_id}`, () => api("POST", `${path}/assign`, { assignee: me.staffId })));
    control(td, "button", { type: "button", textContent: "Add note", className: "case-add-note" }).addEventListener("click", () =>
      act(`note on case ${c.case_id}`, () => api("POST", `${path}/note`, { note: note.value })));
    if (c.status === "open") {
      control(td, "button", { type: "button", textContent: "Escalate", className: "case-escalate" }).addEventListener("click", () =>
        act(`escalate case ${c.case_id}`, () => api("POST", `${path}/escalate`, { note: note.value })));
    }
    const reason = control(td, "select", { className: "case-close-reason" });
    for (const r of ["false_positive", "confirmed_abuse", "resolved", "duplicate", "reported"]) {
      control(reason, "option", { value: r, textContent: r.replace("_", " ") });
    }
    control(td, "button", { type: "button", textContent: "Close", className: "case-close" }).addEventListener("click", () =>
      act(`close case ${c.case_id}`, () => api("POST", `${path}/close`, { reason: reason.value, note: note.value })));
    // the analyst's signed actions (the note is the reason; for a report, its narrative)
    for (const [label, action] of [["Freeze account (signed)", "freeze_account"], ["Pause withdrawals (signed)", "pause_withdrawals"],
      ["Require 2FA reset (signed)", "require_2fa_reset"], ["File report (signed)", "report"]]) {
      control(td, "button", { type: "button", textContent: label, className: `case-${action.replaceAll("_", "-")}` }).addEventListener("click", () =>
        act(`${action} for case ${c.case_id}`, async () => api("POST", `${path}/actions`, {
          action, reason: note.value,
          decision: await decisionToken(`monitoring.${action}`, [c.case_id, c.account_id, note.value]),
        })));
    }
    // the suspicious-activity report as a JSON file (once one is filed)
    control(td, "button", { type: "button", textContent: "Export report", className: "case-export-report" }).addEventListener("click", () =>
      act(`export the report of case ${c.case_id}`, async () => {
        const out = await api("GET", `${path}/report`);
        const link = document.createElement("a");
        link.href = URL.createObjectURL(new Blob([JSON.stringify(out.report, null, 2)], { type: "application/json" }));
        link.download = `case-${c.case_id}-report.json`;
        link.click();
        return { accepted: `report of case ${c.case_id} exported` };
      }));
  }
}

// Markets and fees (docs/staff.md, "Markets and fees"). Amounts are typed in the asset's units and
// turned into minor units here exactly (digit strings: no float touches an amount).
function toMinor(text, decimals, field) {
  const m = /^([0-9]+)(?:\.([0-9]+))?$/.exec(text.trim());
  if (!m || (m[2] || "").length > decimals) throw new Error(`${field}: a decimal with at most ${decimals} decimals is required`);
  const digits = (m[1] + (m[2] || "").padEnd(decimals, "0")).replace(/^0+(?=.)/, "");
  return digits;
}

function fromMinor(digits, decimals) {
  const padded = String(digits).padStart(decimals + 1, "0");
  const whole = padded.slice(0, padded.length - decimals);
  const frac = padded.slice(padded.length - decimals).replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : whole;
}

function intField(text, field) {
  if (!/^[0-9]{1,18}$/.test(text.trim())) throw new Error(`${field}: a whole number is required`);
  return Number(text.trim());
}

// A quorum decision's controls: sign my approval (a token for the next operator) or submit with theirs.
function quorum(td, what, cls, action, subject, submit) {
  const others = control(td, "textarea", { placeholder: "other operators' approval tokens, one per line", rows: 2, className: `${cls}-approvals` });
  const mine = control(td, "button", { type: "button", textContent: "Sign my approval", className: `${cls}-sign` });
  const go = control(td, "button", { type: "button", textContent: `${what} with approvals`, className: `${cls}-submit` });
  const token = control(td, "output", { className: `${cls}-token` });
  mine.addEventListener("click", async () => {
    try {
      token.value = await decisionToken(action, subject());
    } catch (err) {
      say(`${what}: ${err.message}`, false);
    }
  });
  go.addEventListener("click", () => act(what, async () => {
    const approvals = [await decisionToken(action, subject()), ...others.value.split(/\s+/).filter(Boolean)];
    return submit(approvals);
  }));
}

function formValues(form) {
  return Object.fromEntries(Array.from(form.elements).filter((e) => e.name).map((e) => [e.name, e.value]));
}

let marketsView = null;
const NO_LIMIT = "1" + "0".repeat(30); // ListMarket's default max_qty

function renderMarkets(view) {
  marketsView = view;
  $("markets-version").textContent = String(view.version);
  const body = $("markets").tBodies[0];
  body.replaceChildren();
  for (const m of view.markets) {
    const row = body.insertRow();
    row.dataset.symbol = m.symbol;
    const qd = view.assets[m.quote], bd = view.assets[m.base];
    [m.kind === "perpetual" ? `${m.symbol} (perpetual)` : m.symbol, m.segment, m.status, fromMinor(m.tick_size, qd), fromMinor(m.lot_size, bd), fromMinor(m.min_qty, bd),
      m.max_qty === NO_LIMIT ? "no limit" : fromMinor(m.max_qty, bd), fromMinor(m.min_notional, qd), m.band_ppm ? `±${m.band_ppm / 10000} %` : "none",
      fromMinor(m.reference_price, qd) + (m.indexed ? " (index)" : ""), String(m.open_orders)].forEach((t) => cell(row, t));
    const td = cell(row, "");
    const reason = control(td, "input", { placeholder: "reason", className: "market-reason", ariaLabel: `reason for ${m.symbol}` });
    for (const level of ["HALTED", "REDUCE_ONLY"]) {
      control(td, "button", { type: "button", textContent: level === "HALTED" ? "Halt" : "Reduce only", className: `market-${level.toLowerCase()}` })
        .addEventListener("click", () => act(`${level} ${m.symbol}`, async () => {
          const haltId = `${m.symbol}.status.${level.toLowerCase()}`;
          return api("POST", "/halts", { halt_id: haltId, scope_kind: "market", scope: m.symbol, level, reason: reason.value,
            decision: await decisionToken("halt.raise", [haltId, "market", m.symbol, level, reason.value]) });
        }));
    }
    const price = control(td, "input", { placeholder: "reference price", className: "market-price", ariaLabel: `reference price of ${m.symbol}` });
    const priceMinor = () => toMinor(price.value, qd, "reference price");
    if (m.indexed) {
      quorum(td, `override ${m.symbol}`, "market-ref", "index.override",
        () => [m.symbol, { int: priceMinor() }, reason.value, indexVersion],
        (approvals) => api("POST", "/index/override", { symbol: m.symbol, price_minor: priceMinor(), reason: reason.value, approvals }));
    } else {
      quorum(td, `reprice ${m.symbol}`, "market-ref", "market.reference",
        () => [m.symbol, { int: priceMinor() }, reason.value, view.version],
        (approvals) => api("POST", `/markets/${m.symbol}/reference`, { price_minor: priceMinor(), reason: reason.value, approvals }));
    }
    if (m.kind === "perpetual") continue; // a perpetual's positions need a settlement first: not delisted here
    quorum(td, `delist ${m.symbol}`, "market-delist", "market.delist", () => [m.symbol, reason.value, view.version],
      (approvals) => api("POST", `/markets/${m.symbol}/delist`, { reason: reason.value, approvals }));
  }
  const tiers = $("fee-tiers").tBodies[0];
  tiers.replaceChildren();
  for (const t of view.fee_tiers) {
    const row = tiers.insertRow();
    row.dataset.tier = String(t.tier);
    [String(t.tier), String(t.maker_rate_ppm), String(t.taker_rate_ppm)].forEach((x) => cell(row, x));
  }
  const accounts = $("account-tiers").tBodies[0];
  accounts.replaceChildren();
  for (const a of view.account_tiers) {
    const row = accounts.insertRow();
    row.dataset.account = a.account;
    [a.account, String(a.tier)].forEach((x) => cell(row, x));
  }
}

// The three forms are wired once; their subjects read the view of the latest refresh.
function wireMarketForms() {
  const listing = $("list-market");
  const listed = () => {
    const f = formValues(listing), v = marketsView;
    const bd = v.assets[f.base], qd = v.assets[f.quote];
    if (bd === undefined) throw new Error(`base: unknown asset ${f.base}`);
    if (qd === undefined) throw new Error(`quote: unknown asset ${f.quote}`);
    const lot = toMinor(f.lot_size, bd, "lot size");
    return { symbol: f.symbol, base: f.base, quote: f.quote, segment: f.segment || "spot", tick_size: toMinor(f.tick_size, qd, "tick size"),
      lot_size: lot, min_qty: lot, max_qty: NO_LIMIT, min_notional: toMinor(f.min_notional, qd, "min notional"),
      band_ppm: intField(f.band_ppm, "band"), band_timeout_ns: "60000000000", market_slippage_ppm: 50000,
      max_open_orders_per_account: 200, max_book_orders: 200000, max_price_levels: 20000, reason: f.reason };
  };
  quorum(listing, "list market", "list-market", "market.list", () => {
    const m = listed();
    return [m.symbol, m.base, m.quote, m.segment, { int: m.tick_size }, { int: m.lot_size }, { int: m.min_qty }, { int: m.max_qty },
      { int: m.min_notional }, m.band_ppm, { int: m.band_timeout_ns }, m.market_slippage_ppm, m.max_open_orders_per_account,
      m.max_book_orders, m.max_price_levels, m.reason, marketsView.version];
  }, (approvals) => {
    const { reason, ...market } = listed();
    return api("POST", "/markets", { market, reason, approvals });
  });
  const fee = $("fee-tier");
  const tier = () => {
    const f = formValues(fee);
    return [intField(f.tier, "tier"), intField(f.maker_rate_ppm, "maker rate"), intField(f.taker_rate_ppm, "taker rate"), f.reason];
  };
  quorum(fee, "set fee tier", "fee-tier", "fee.tier", () => [...tier(), marketsView.version], (approvals) => {
    const [t, maker, taker, reason] = tier();
    return api("POST", "/fees/tiers", { tier: t, maker_rate_ppm: maker, taker_rate_ppm: taker, reason, approvals });
  });
  const account = $("account-fee");
  const assignment = () => {
    const f = formValues(account);
    return [f.account, intField(f.tier, "tier"), f.reason];
  };
  quorum(account, "set account fee tier", "account-fee", "fee.account_tier", () => [...assignment(), marketsView.version], (approvals) => {
    const [acct, t, reason] = assignment();
    return api("POST", "/fees/accounts", { account: acct, tier: t, reason, approvals });
  });
  $("raise-halt-submit").addEventListener("click", () => {
    const f = formValues($("raise-halt"));
    act(`raise ${f.halt_id}`, async () => api("POST", "/halts", { ...f,
      decision: await decisionToken("halt.raise", [f.halt_id, f.scope_kind, f.scope, f.level, f.reason]) }));
  });
}

// Vault refills and the hot key's signers (docs/custody.md, docs/keys.md): the node's custody views.
let vaultView = null;
let keyView = null;

async function renderVaults() {
  try {
    vaultView = await api("GET", "/vault-refills");
    keyView = vaultView.hot_key_id ? await api("GET", `/keys/${encodeURIComponent(vaultView.hot_key_id)}`) : null;
  } catch (err) {  // a node without Bitcoin custody has no vaults
    $("vault-section").hidden = true;
    return;
  }
  $("vault-section").hidden = false;
  const vaults = $("vaults").tBodies[0];
  vaults.replaceChildren();
  for (const v of vaultView.vaults) {
    const row = vaults.insertRow();
    row.dataset.vault = v.from;
    [v.from, v.wallet, v.address, v.signer_type].forEach((t) => cell(row, t));
  }
  const body = $("refills").tBodies[0];
  body.replaceChildren();
  for (const r of vaultView.refills) {
    const row = body.insertRow();
    row.dataset.refill = r.refill_id;
    [r.refill_id, r.from, fromMinor(r.amount_minor, 8), r.state, r.approved_by.join(", "),
      r.nominated_holders.map((fp, i) => `${fp} ${r.nominated_holder_files[i] || ""}`.trim()).join("; "), r.txid].forEach((t) => cell(row, t));
    const td = cell(row, "");
    if (r.state !== "awaiting_signatures") continue;
    control(td, "textarea", { value: r.psbt, readOnly: true, rows: 2, className: "refill-psbt", ariaLabel: `unsigned PSBT of ${r.refill_id}` });
    const signedPsbts = control(td, "textarea", { placeholder: "the nominated holders' signed PSBTs, one per line", rows: 2,
      className: "refill-signed", ariaLabel: `signed PSBTs of ${r.refill_id}` });
    control(td, "button", { type: "button", textContent: "Submit signed PSBTs", className: "refill-submit" }).addEventListener("click", () =>
      act(`submit ${r.refill_id}`, async () => {
        const done = await api("POST", `/vault-refills/${encodeURIComponent(r.refill_id)}/submit`,
          { psbts: signedPsbts.value.split(/\s+/).filter(Boolean) });
        return { accepted: `RecordTransferSigned, ${done.state}` };
      }));
    const reason = control(td, "input", { placeholder: "reason to cancel", className: "refill-cancel-reason", ariaLabel: `reason to cancel ${r.refill_id}` });
    control(td, "button", { type: "button", textContent: "Cancel (one operator)", className: "refill-cancel" }).addEventListener("click", () =>
      act(`cancel ${r.refill_id}`, async () => {
        await api("POST", `/vault-refills/${encodeURIComponent(r.refill_id)}/cancel`,
          { reason: reason.value, decision: await decisionToken("vault.refill.cancel", [r.refill_id, reason.value]) });
        return { accepted: "CancelVaultRefillSigned" };
      }));
  }
  const signers = $("key-signers").tBodies[0];
  signers.replaceChildren();
  if (!keyView) return;
  const holders = keyView.signers.filter((x) => x.holder).length;
  $("key-summary").textContent = `${keyView.key_id}, ${keyView.threshold}-of-${holders}, address ${keyView.address}, generation ${keyView.generation}`;
  for (const x of keyView.signers) {
    const row = signers.insertRow();
    row.dataset.signer = String(x.id);
    [String(x.id), (x.holder ? "yes" : "no (spare)") + (x.running === false ? ", process DOWN" : ""), x.url, x.fingerprint].forEach((t) => cell(row, t));
  }
}

function wireVaultForms() {
  const refill = $("new-refill");
  const decided = () => {
    const f = formValues(refill);
    return { from: f.from, amount: f.amount.trim(), refill_id: f.refill_id.trim(), amount_minor: toMinor(f.amount, 8, "amount") };
  };
  quorum(refill, "refill", "new-refill", "vault.refill", () => {
    const r = decided();
    return [r.refill_id, "BTC", `btc_${r.from}`, "btc_hot", { int: r.amount_minor }];
  }, async (approvals) => {
    const r = decided();
    const doc = await api("POST", "/vault-refills", { from: r.from, amount: r.amount, refill_id: r.refill_id, approvals });
    return { accepted: `AuthorizeVaultRefillSigned, ${doc.id} awaits the nominated holders` };
  });
  $("start-signer-submit").addEventListener("click", () => act("start signer", async () => {
    const id = intField(formValues($("start-signer")).id, "signer id");
    const started = await api("POST", `/keys/${encodeURIComponent(keyView.key_id)}/signers`, { id });
    return { accepted: `signer ${started.id} started at ${started.url}` };
  }));
  const reshare = $("reshare");
  const change = () => {
    const f = formValues(reshare);
    const ids = f.signers.split(/[\s,]+/).filter(Boolean).map((t) => intField(t, "signers"));
    const pairs = ids.slice().sort((a, b) => a - b).map((id) => {
      const known = keyView.signers.find((x) => x.id === id);
      if (!known || !known.fingerprint) throw new Error(`signers: signer ${id} is not running here; start it first`);
      return [id, known.fingerprint];
    });
    return { ids, pairs, threshold: intField(f.threshold, "threshold"), reason: f.reason, generation: keyView.generation };
  };
  quorum(reshare, "reshare", "reshare", "keys.reshare", () => {
    const c = change();
    return [keyView.key_id, c.generation, c.pairs, c.threshold, c.reason];
  }, async (approvals) => {
    const c = change();
    const done = await api("POST", `/keys/${encodeURIComponent(keyView.key_id)}/reshare`, { generation: c.generation,
      signers: c.ids.map((id) => ({ id })), threshold: c.threshold, reason: c.reason, approvals });
    return { accepted: `ReshareSignersSigned, generation ${done.generation}` };
  });
}

// The audit trail (GET /admin/v1/audit): read from the journal on demand, not at every refresh.
async function loadAudit() {
  const view = await api("GET", "/audit");
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const d of view.decisions) {
    const row = body.insertRow();
    row.dataset.seq = String(d.seq);
    [String(d.seq), d.command, String(d.about), d.source, d.signed_by.join(", "), d.reason].forEach((t) => cell(row, t));
  }
  return { accepted: `audit trail up to seq ${view.upto_seq}, ${view.decisions.length} decisions` };
}

let indexVersion = 0;

async function sha256Hex(text) {
  return hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

async function refresh() {
  const [halts, review, staff, policy, index, markets] = await Promise.all([api("GET", "/halts"), api("GET", "/review"),
    api("GET", "/staff"), api("GET", "/policy"), api("GET", "/index"), api("GET", "/markets")]);
  indexVersion = index.version;
  renderMarkets(markets);
  renderHalts(halts);
  renderWithdrawals(review);
  await renderMonitoring();
  await renderVaults();
  const proposals = $("proposals").tBodies[0];
  proposals.replaceChildren();
  for (const p of policy.proposals) {
    const row = proposals.insertRow();
    row.dataset.proposal = p.proposal_id;
    [p.proposal_id, p.proposer, p.state, p.approvals.join(", ")].forEach((t) => cell(row, t));
    const td = cell(row, "");
    if (p.state === "proposed") {
      control(td, "button", { type: "button", textContent: "Approve", className: "approve" }).addEventListener("click", () =>
        act(`approve policy ${p.proposal_id}`, async () => api("POST", `/policy/proposals/${encodeURIComponent(p.proposal_id)}/approve`, {
          decision: await decisionToken("policy.approve", [p.proposal_id, await sha256Hex(p.policy)]),
        })));
    }
  }
  const feeds = $("feed-keys").tBodies[0];
  feeds.replaceChildren();
  for (const [venue, key] of Object.entries(index.feed_keys)) {
    const row = feeds.insertRow();
    row.dataset.venue = venue;
    [venue, key].forEach((t) => cell(row, t));
  }
  $("index-symbols").textContent = index.symbols.length ? index.symbols.join(", ") : "none";
  $("index-version").textContent = String(index.version);
  const members = $("staff").tBodies[0];
  members.replaceChildren();
  for (const m of staff.members) {
    const row = members.insertRow();
    [m.staff_id, m.roles.join(", "), m.status, m.public_key.slice(0, 16) + "…", String(m.added_seq)].forEach((t) => cell(row, t));
  }
}

async function signIn() {
  $("login-error").textContent = "";
  try {
    let doc = JSON.parse($("keyfile").value);
    if (Array.isArray(doc.staff)) {
      const wanted = $("staffid").value.trim();
      doc = doc.staff.find((e) => e.staff_id === wanted);
      if (!doc) throw new Error("this file holds several keys: name the staff id");
    }
    me = { staffId: doc.staff_id, key: await importKey(doc.private_key, doc.public_key) };
    await refresh();
    $("who").textContent = `signed in as ${me.staffId}`;
    $("login").hidden = true;
    $("console").hidden = false;
    $("keyfile").value = "";
  } catch (err) {
    me = null;
    $("login-error").textContent = `cannot sign in: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("click", signIn);
  wireMarketForms();
  wireVaultForms();
  $("audit-load").addEventListener("click", async () => {
    try {
      say(`audit: accepted (${(await loadAudit()).accepted})`, true);
    } catch (err) {
      say(`audit: ${err.message}`, false);
    }
  });
});
