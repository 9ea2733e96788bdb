// The wallet pages (/wallet/deposit, /wallet/withdraw, /wallet/history) on the signed-in web session:
// every call goes to /session/v3/... with the session cookie; state changes carry the CSRF token.
"use strict";

// The page's language (i18n.js): `_` translates (the catalogue is loaded before start() draws anything).
const { _, num, amount, duration, dateTime } = window.rfI18n;
function withdrawStatus(s) {
  return {0: _("e-mail sent"), 1: _("cancelled"), 2: _("awaiting approval"), 3: _("rejected"), 4: _("processing"), 5: _("failure"), 6: _("completed")}[s];
}
function depositStatus(s) {
  return {0: _("pending"), 6: _("credited"), 1: _("final"), 8: _("waiting for you (quarantined)"), 7: _("frozen"), 2: _("rejected")}[s];
}
const pendingFactor = () => _("Your new second factor is not confirmed yet: open the link we e-mailed to you. Until then it does not count (no trading, no API keys). If you did not set it up, freeze your account from that e-mail.");
const page = location.pathname.split("/").pop();
let csrf = "";
let coins = [];

function $(sel) { return document.querySelector(sel); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}
const when = dateTime;  // every page writes a time one way (i18n.js: as the server's pages do)

async function call(method, path, params) {
  const body = params ? new URLSearchParams(params).toString() : "";
  const url = "/session/v3" + path + (method === "GET" && body ? "?" + body : "");
  const opts = {method, headers: {}};
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = csrf;
    opts.headers["Content-Type"] = "application/x-www-form-urlencoded";
    opts.body = body;
  }
  const r = await fetch(url, opts);
  const j = await r.json();
  if (j && j.csrfToken) csrf = j.csrfToken;  // a TOTP step-up rotated the session (also on a refusal after it)
  if (!r.ok) {
    // a first second factor not yet confirmed from its e-mail link (sessions.PENDING_FACTOR_MESSAGE): say so in the page's language
    if (j && /confirm your new second factor first/.test(j.msg || "")) throw new Error(pendingFactor());
    throw new Error(j.msg || ("HTTP " + r.status));
  }
  return j;
}

function fill(select, items) {
  const keep = select.value;
  select.replaceChildren(...items.map(([v, t]) => el("option", {value: v}, t)));
  if (items.some(([v]) => v === keep)) select.value = keep;
}

// ---------------------------------------------------------------- deposit

async function showAddress() {
  const coin = $("#dep-coin").value;
  const net = coins.find(c => c.coin === coin).networkList[0];
  const a = await call("GET", "/capital/deposit/address", {coin});
  // a slower answer for a coin chosen earlier (the first BTC address is made in the HSM) must not
  // overwrite the address of the coin chosen since
  if ($("#dep-coin").value !== coin) return;
  $("#dep-address").textContent = a.address;
  $("#dep-qr").innerHTML = a.qrSvg;  // segno's SVG, drawn by the server from the address alone
  $("#dep-network").textContent = net.network;
  $("#dep-credit").textContent = net.minConfirm;
  $("#dep-final").textContent = net.unLockConfirm;
  document.querySelectorAll(".dep-coin-name").forEach(e => { e.textContent = coin; });
  $("#dep-box").hidden = false;
}

function depositRows(tbody, rows) {
  tbody.replaceChildren(...rows.map(d => el("tr", {"data-txid": d.txId, "data-status": d.status},
    el("td", {}, when(d.insertTime)), el("td", {}, d.coin), el("td", {class: "amount"}, amount(d.amount, true)),
    el("td", {class: "confirm"}, d.confirmTimes), el("td", {class: "status"}, depositStatus(d.status) || d.status),
    el("td", {class: "txid"}, d.txId))));
}

// The source-of-funds form: one entry per quarantined deposit (status 8); the form sits outside
// the table the poll redraws, so a declaration being typed is never wiped.
let quarantined = [];
function showQuarantined(rows) {
  quarantined = rows.filter(d => d.status === 8 || d.status === 7);  // quarantined or frozen: both take a declaration
  fill($("#sof-txid"), quarantined.map(d => [d.txId, d.amount + " " + d.coin + " (" + d.txId.slice(0, 14) + "…)"]));
  const chosen = quarantined.find(d => d.txId === $("#sof-txid").value);
  $("#sof-reason").textContent = chosen ? chosen.info : "";
  $("#sof").hidden = quarantined.length === 0;
}

// ---------------------------------------------------------------- withdraw

async function refreshBook() {
  const b = await call("GET", "/addressBook");
  const c = b.cooling;
  $("#book-cooling").textContent = duration(c);
  $("#book tbody").replaceChildren(...b.entries.map(e => {
    const remove = el("button", {type: "button", class: "remove"}, _("Remove"));
    remove.addEventListener("click", () => call("DELETE", "/addressBook", {coin: e.coin, address: e.address})
      .then(refreshBook).catch(err => { $("#book-status").textContent = err.message; }));
    return el("tr", {"data-address": e.address, "data-coin": e.coin, "data-state": e.status},
      el("td", {}, e.coin), el("td", {}, e.network), el("td", {}, e.address),
      el("td", {class: "state"}, e.status === "cooling" ? _("cooling: usable in %(time)s", {time: duration(e.coolingSecondsLeft)}) : _("usable")),
      el("td", {}, remove));
  }));
  const coin = $("#wd-coin").value;
  fill($("#wd-address"), b.entries.filter(e => e.coin === coin)
    .map(e => [e.address, e.address + (e.status === "cooling" ? " " + _("(cooling: usable in %(time)s)", {time: duration(e.coolingSecondsLeft)}) : "")]));
}

// The post-change withdrawal lock (a new address, API key or anti-phishing code locks withdrawals for a
// while, docs/security.md): said above the form, with its end, before the user fills it in
async function showLock() {
  const me = await call("GET", "/me");
  const box = $("#wd-lock");
  const left = Math.ceil((me.withdrawalsLockedUntil - Date.now()) / 1000);
  box.hidden = !(me.withdrawalsLockedUntil && left > 0);
  box.dataset.until = me.withdrawalsLockedUntil || 0;
  if (box.hidden) { box.textContent = ""; return; }
  const when = {time: dateTime(me.withdrawalsLockedUntil), left: duration(left), change: me.withdrawalsLockedBy};
  box.textContent = me.withdrawalsLockedBy
    ? _("Withdrawals are locked until %(time)s (%(left)s from now) after a recent security change: %(change)s.", when)
    : _("Withdrawals are locked until %(time)s (%(left)s from now) after a recent security change.", when);
}

async function showLimits() {
  const coin = $("#wd-coin").value;
  const net = coins.find(c => c.coin === coin).networkList[0];
  const acct = await call("GET", "/account");
  if ($("#wd-coin").value !== coin) return;  // the coin was changed while this answer was on its way
  const bal = acct.balances.find(b => b.asset === coin);
  $("#wd-limits").textContent = _("Network %(network)s: fee %(fee)s %(coin)s (taken from the amount), minimum %(min)s, maximum %(max)s; available %(free)s %(coin)s.",
    {network: net.network, fee: amount(net.withdrawFee, true), coin, min: amount(net.withdrawMin, true), max: amount(net.withdrawMax, true),
     free: amount(bal ? bal.free : "0", true)}) +
    (net.withdrawEnable ? "" : " " + _("Withdrawals are paused: %(reason)s", {reason: net.withdrawDesc}));
}

// waiting for the e-mail (0) or for a human (2): the user may still cancel it (status 1, hold released)
function cancelButton(w) {
  if (w.status !== 0 && w.status !== 2) return "";
  const b = el("button", {type: "button", class: "cancel"}, _("Cancel"));
  b.addEventListener("click", () => call("POST", "/capital/withdraw/cancel", {id: w.id})
    .then(refreshWithdrawals).catch(err => { $("#wd-status").textContent = err.message; }));
  return b;
}

async function refreshWithdrawals() {
  const rows = await call("GET", "/capital/withdraw/history");
  $("#withdrawals").replaceChildren(...rows.map(w => el("div", {class: "withdrawal", "data-id": w.id, "data-status": w.status},
    el("p", {}, _("%(time)s · %(amount)s %(coin)s (fee %(fee)s) to %(address)s", {time: when(w.applyTime), amount: amount(w.amount, true), coin: w.coin, fee: amount(w.transactionFee, true), address: w.address}) + " · ",
      el("b", {class: "status"}, withdrawStatus(w.status)), " ", cancelButton(w)),
    el("ol", {class: "timeline"}, ...w.timeline.map(s => el("li", {"data-status": s.status}, s.step + ": " + s.info))))));
}

// ---------------------------------------------------------------- history

async function refreshHistory() {
  depositRows($("#hist-deposits tbody"), await call("GET", "/capital/deposit/hisrec"));
  const ws = await call("GET", "/capital/withdraw/history");
  $("#hist-withdrawals tbody").replaceChildren(...ws.map(w => el("tr", {"data-id": w.id, "data-status": w.status},
    el("td", {}, when(w.applyTime)), el("td", {}, w.coin), el("td", {}, amount(w.amount, true)), el("td", {}, amount(w.transactionFee, true)),
    el("td", {}, w.address), el("td", {class: "status"}, withdrawStatus(w.status)), el("td", {}, w.info), el("td", {}, w.txId))));
}

// ---------------------------------------------------------------- start

function poll(fn, ms) {
  const run = () => fn().catch(err => { $("#wallet-error").textContent = err.message; $("#wallet-error").hidden = false; })
    .finally(() => setTimeout(run, ms));
  run();
}

// the exchange's halts (e.g. withdrawals of an asset paused by chain reconciliation), as on the
// trading page: shown to everyone, redrawn on every change pushed by /ws/!halts
async function refreshHalts() {
  try {
    const halts = await (await fetch("/v1/halts")).json();
    const banner = document.getElementById("halts");
    banner.hidden = halts.length === 0;
    banner.textContent = halts.map(h => `${h.level} (${h.scope_kind} ${h.scope}): ${h.reason}`).join(" · ");
  } catch (e) { /* shown again on the next change */ }
}

function watchHalts() {
  refreshHalts();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/!halts`);
  ws.onmessage = () => refreshHalts();
  ws.onclose = () => setTimeout(watchHalts, 2000);
}

async function start() {
  await window.rfI18n.ready;
  watchHalts();
  let me;
  try {
    me = await call("GET", "/me");
  } catch (err) {
    $("#whoami").textContent = _("not signed in");
    $("#signin-link").hidden = false;
    $("#signed-out-note").hidden = false;  // the page itself says why it is empty, with the way in
    return;
  }
  csrf = me.csrfToken;
  $("#whoami").textContent = _("signed in as %(email)s", {email: me.email});
  coins = (await call("GET", "/capital/config/getall")).filter(c => c.networkList.length);
  const options = coins.map(c => [c.coin, c.coin + " (" + c.networkList[0].network + ")"]);
  const section = document.getElementById(page);
  if (section) section.hidden = false;
  if (page === "deposit") {
    fill($("#dep-coin"), options);
    $("#dep-coin").addEventListener("change", showAddress);
    await showAddress();
    $("#sof-form").addEventListener("submit", ev => {
      ev.preventDefault();
      $("#sof-status").textContent = "…";
      call("POST", "/capital/deposit/sourceOfFunds", {txId: $("#sof-txid").value, declaration: $("#sof-text").value.trim()})
        .then(r => { $("#sof-status").textContent = r.info; $("#sof-text").value = ""; })
        .catch(err => { $("#sof-status").textContent = err.message; });
    });
    poll(async () => {
      const rows = await call("GET", "/capital/deposit/hisrec");
      depositRows($("#deposits tbody"), rows);
      showQuarantined(rows);
    }, 1000);
  } else if (page === "withdraw") {
    fill($("#book-coin"), options);
    fill($("#wd-coin"), options);
    $("#wd-coin").addEventListener("change", () => { refreshBook(); showLimits(); });
    $("#book-form").addEventListener("submit", ev => {
      ev.preventDefault();
      $("#book-status").textContent = "…";
      call("POST", "/addressBook", {coin: $("#book-coin").value, address: $("#book-address").value.trim(), code: $("#book-code").value.trim()})
        .then(r => { $("#book-status").textContent = r.info; $("#book-address").value = ""; })
        .catch(err => { $("#book-status").textContent = err.message; })
        .finally(() => { $("#book-code").value = ""; refreshBook(); showLock().catch(() => {}); });
    });
    $("#wd-form").addEventListener("submit", ev => {
      ev.preventDefault();
      $("#wd-status").textContent = "…";
      call("POST", "/capital/withdraw/apply", {coin: $("#wd-coin").value, address: $("#wd-address").value,
                                                amount: $("#wd-amount").value.trim(), code: $("#wd-code").value.trim()})
        .then(r => { $("#wd-status").textContent = _("Withdrawal %(id)s: %(info)s", {id: r.id, info: r.info}); })
        .catch(err => { $("#wd-status").textContent = err.message; })
        .finally(() => { $("#wd-code").value = ""; refreshWithdrawals(); showLimits(); });
    });
    await showLimits();
    poll(showLock, 5000);  // the time left, its end, and a change made elsewhere (the security centre, a confirmed address link)
    poll(refreshBook, 1000);
    poll(refreshWithdrawals, 1000);
  } else if (page === "history") {
    poll(refreshHistory, 2000);
  }
}

start();
