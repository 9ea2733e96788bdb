// ringfence dashboard: plain JavaScript, no CDN, no build step.
// Money stays as decimal strings from the server; the only numbers computed here are for drawing
// the charts and for sorting book levels (exactly, via BigInt on the fixed-decimal strings).
// Charts: TradingView's lightweight-charts (vendored in the package, web/static/vendor/README.md,
// served at /dashboard/vendor/lightweight-charts.js): 1m candles and volume from /api/v3/klines,
// live from the <symbol>@kline_1m stream, the signed-in user's fills (/session/v3/myTrades) as
// markers; the depth chart is a small canvas of our own from the order book.
"use strict";

const state = {
  markets: {}, symbol: null, me: null, csrf: null,
  book: { bids: new Map(), asks: new Map(), lastUpdateId: 0, buffer: [], ready: false },
  ws: null, userWs: null, klines: [], trades: [], fills: [],
};
const INTERVAL_S = 60;  // the candles' interval (1m)
// The chart's objects, also for tests and curious users: ringfenceChart.candles.data(), .markers.markers().
const chart = { api: null, candles: null, volume: null, markers: null, liveUpdates: 0, depth: { bids: [], asks: [] } };
window.ringfenceChart = chart;

const $ = (id) => document.getElementById(id);
// The page's language (i18n.js): `_` translates, `num` writes a decimal string for the locale (display only).
const { _, num, amount, stepped } = window.rfI18n;
function amountCell(row, s, cls, trim) { const td = cell(row, amount(s, trim), cls); td.title = s; return td; }
// the selected market's tick size (prices) and step size (quantities), from exchangeInfo's filters
function marketFilter(type, field) {
  const m = state.markets[state.symbol];
  const f = m && (m.filters || []).find((x) => x.filterType === type);
  return f ? f[field] : undefined;
}
const priceText = (p) => stepped(p, marketFilter("PRICE_FILTER", "tickSize"));
const qtyText = (q) => stepped(q, marketFilter("LOT_SIZE", "stepSize"));
function orderPrice(o) { // a market order has no limit price (the API says "0"): say so, as exchanges do
  return o.type === "MARKET" ? _("Market") : num(o.price);
}

function statusText(s) { // order statuses and sides as the catalogue has them (each spelled out for extraction)
  switch (s) {
    case "NEW": return _("NEW");
    case "PARTIALLY_FILLED": return _("PARTIALLY_FILLED");
    case "FILLED": return _("FILLED");
    case "CANCELED": return _("CANCELED");
    case "EXPIRED": return _("EXPIRED");
    case "EXPIRED_IN_MATCH": return _("EXPIRED_IN_MATCH");
    case "REJECTED": return _("REJECTED");
    case "BUY": return _("BUY");
    case "SELL": return _("SELL");
    default: return s;
  }
}
// Private calls go to /session/v3 with the session cookie (HttpOnly: this script never sees it)
// and, for changes, the session's CSRF token. No API key or secret ever reaches the browser.
const SESSION = "/session/v3";

function scaled(s) { // "61000.50" -> BigInt with the decimals removed (same decimals per column)
  const [w, f = ""] = s.split(".");
  return BigInt(w + f);
}

async function api(method, path, params = {}, session = false) {
  const qs = new URLSearchParams(params);
  const headers = {};
  let url = session ? SESSION + path : path, body;
  if (session && method !== "GET") {
    if (!state.csrf) throw new Error(_("sign in first"));
    headers["X-CSRF-Token"] = state.csrf;
  }
  if (method === "POST") {
    body = qs.toString();
    headers["Content-Type"] = "application/x-www-form-urlencoded";
  } else if ([...qs].length) {
    url += "?" + qs.toString();
  }
  const res = await fetch(url, { method, headers, body, credentials: "same-origin" });
  const data = await res.json();
  if (!res.ok || (data && data.code && data.code < 0)) {
    const err = new Error(data.msg || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// ---------------------------------------------------------------- markets

async function loadMarkets() {
  const info = await api("GET", "/api/v3/exchangeInfo");
  const nav = $("markets");
  nav.textContent = "";
  for (const s of info.symbols) {
    state.markets[s.symbol] = s;
    const b = document.createElement("button");
    b.textContent = s.symbol;
    b.dataset.symbol = s.symbol;
    b.addEventListener("click", () => selectMarket(s.symbol));
    nav.appendChild(b);
  }
  if (info.symbols.length) await selectMarket(info.symbols[0].symbol);
}

async function selectMarket(symbol) {
  state.symbol = symbol;
  for (const b of $("markets").children) b.classList.toggle("active", b.dataset.symbol === symbol);
  $("symbol-title").textContent = symbol;
  state.book = { bids: new Map(), asks: new Map(), lastUpdateId: 0, buffer: [], ready: false };
  state.trades = [];
  state.fills = [];
  openMarketStream(symbol);
  const [klines, trades] = await Promise.all([
    api("GET", "/api/v3/klines", { symbol, interval: "1m", limit: "120" }),
    api("GET", "/api/v3/trades", { symbol, limit: "30" }),
  ]);
  state.klines = klines;
  state.trades = trades.reverse().map((t) => ({ p: t.price, q: t.qty, T: t.time }));
  renderTrades();
  drawChart();
  await loadBookSnapshot(symbol);
  refreshPrivate();
}

// ---------------------------------------------------------------- order book: snapshot + diffs

async function loadBookSnapshot(symbol) {
  const snap = await api("GET", "/api/v3/depth", { symbol, limit: "50" });
  const book = state.book;
  book.bids = new Map(snap.bids.map(([p, q]) => [p, q]));
  book.asks = new Map(snap.asks.map(([p, q]) => [p, q]));
  book.lastUpdateId = snap.lastUpdateId;
  for (const d of book.buffer) applyDiff(d);
  book.buffer = [];
  book.ready = true;
  renderBook();
}

function applyDiff(d) {
  const book = state.book;
  if (d.u <= book.lastUpdateId) return;
  for (const [p, q] of d.b) (scaled(q) === 0n ? book.bids.delete(p) : book.bids.set(p, q));
  for (const [p, q] of d.a) (scaled(q) === 0n ? book.asks.delete(p) : book.asks.set(p, q));
  book.lastUpdateId = d.u;
}

function sortedLevels(map, desc) {
  return [...map.entries()].sort((a, b) => {
    const x = scaled(a[0]), y = scaled(b[0]);
    return desc ? (x < y ? 1 : x > y ? -1 : 0) : (x < y ? -1 : x > y ? 1 : 0);
  });
}

function renderBook() {
  const asks = sortedLevels(state.book.asks, false).slice(0, 12).reverse();
  const bids = sortedLevels(state.book.bids, true).slice(0, 12);
  for (const [id, levels] of [["asks", asks], ["bids", bids]]) {
    const body = $(id).tBodies[0];
    body.textContent = "";
    for (const [p, q] of levels) {
      const row = body.insertRow();
      row.dataset.price = p;
      cell(row, priceText(p)).title = p;
      cell(row, qtyText(q)).title = q;
    }
  }
  const bestAsk = asks.length ? priceText(asks[asks.length - 1][0]) : "—";
  const bestBid = bids.length ? priceText(bids[0][0]) : "—";
  $("spread").textContent = _("bid %(bid)s · ask %(ask)s", { bid: bestBid, ask: bestAsk });
  drawDepth();
}

// ---------------------------------------------------------------- streams

function openMarketStream(symbol) {
  if (state.ws) state.ws.close();
  const s = symbol.toLowerCase();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/stream?streams=${s}@depth/${s}@trade/${s}@kline_1m`);
  state.ws = ws;
  ws.onmessage = (msg) => {
    const { stream, data } = JSON.parse(msg.data);
    if (symbol !== state.symbol) return;
    if (stream.endsWith("@depth")) {
      if (!state.book.ready) state.book.buffer.push(data);
      else { applyDiff(data); renderBook(); }
    } else if (stream.endsWith("@trade")) {
      state.trades.unshift({ p: data.p, q: data.q, T: data.T });
      state.trades = state.trades.slice(0, 30);
      renderTrades();
    } else if (stream.includes("@kline_")) {
      const k = data.k;
      const row = [k.t, k.o, k.h, k.l, k.c, k.v];
      const last = state.klines[state.klines.length - 1];
      if (last && last[0] > k.t) return;  // an old bar: the chart only moves forward
      if (last && last[0] === k.t) state.klines[state.klines.length - 1] = row;
      else state.klines.push(row);
      updateChart(row);
    }
  };
}

function renderTrades() {
  const body = $("trades").tBodies[0];
  body.textContent = "";
  for (const t of state.trades) {
    const row = body.insertRow();
    cell(row, priceText(t.p)).title = t.p;
    cell(row, qtyText(t.q)).title = t.q;
    cell(row, window.rfI18n.time(t.T));
  }
  $("last-price").textContent = state.trades.length ? priceText(state.trades[0].p) : "";
}

function initChart() {
  const LWC = window.LightweightCharts;
  if (!LWC) { $("chart").textContent = _("chart library missing"); return; }
  chart.api = LWC.createChart($("chart"), {
    autoSize: true,
    // The library's logo injects a <style> element, which the dashboard's CSP (style-src 'self') refuses;
    // the attribution its licence NOTICE asks for is the link under the chart instead (index.html).
    layout: { background: { color: "#11171d" }, textColor: "#9fb3c8", attributionLogo: false },
    grid: { vertLines: { color: "#1c252e" }, horzLines: { color: "#1c252e" } },
    timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#22303c", rightOffset: 8, barSpacing: 10 },
    rightPriceScale: { borderColor: "#22303c" },
    localization: { locale: window.rfI18n.intlLocale },
  });
  chart.candles = chart.api.addSeries(LWC.CandlestickSeries, {
    upColor: "#81c784", downColor: "#e57373", wickUpColor: "#81c784", wickDownColor: "#e57373", borderVisible: false,
  });
  chart.candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.28 } });
  chart.volume = chart.api.addSeries(LWC.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "volume", lastValueVisible: false, priceLineVisible: false });
  chart.volume.priceScale().applyOptions({ scaleMargins: { top: 0.78, bottom: 0 } });
  chart.markers = LWC.createSeriesMarkers(chart.candles, []);
}

function bar(row) { // a /klines row or a stream kline -> the candle and the volume bar
  const time = Math.floor(row[0] / 1000);
  const [o, h, l, c, v] = row.slice(1, 6).map(parseFloat);  // drawing only
  return [{ time, open: o, high: h, low: l, close: c }, { time, value: v, color: c >= o ? "#2e6b5b" : "#7b3b3b" }];
}

function drawChart() {
  if (!chart.api) return;
  const bars = state.klines.map(bar);
  chart.candles.setData(bars.map((b) => b[0]));
  chart.volume.setData(bars.map((b) => b[1]));
  chart.api.timeScale().scrollToRealTime();
  drawFills();
}

function updateChart(row) {
  if (!chart.api) return;
  const [candle, volume] = bar(row);
  chart.candles.update(candle);
  chart.volume.update(volume);
  chart.liveUpdates += 1;
}

function drawFills() { // the user's own fills, one marker each at the candle of its minute
  if (!chart.markers) return;
  const first = state.klines.length ? Math.floor(state.klines[0][0] / 1000) : Infinity;
  const marks = state.fills
    .map((f) => ({ f, time: Math.floor(f.time / 1000 / INTERVAL_S) * INTERVAL_S }))
    .filter((m) => m.time >= first)
    .sort((a, b) => a.time - b.time || a.f.id - b.f.id)
    .map(({ f, time }) => ({
      time, id: String(f.id), position: f.isBuyer ? "belowBar" : "aboveBar", shape: f.isBuyer ? "arrowUp" : "arrowDown",
      color: f.isBuyer ? "#4fc3f7" : "#ffb74d",
      text: f.isBuyer ? _("bought %(qty)s @ %(price)s", { qty: num(f.qty), price: num(f.price) }) : _("sold %(qty)s @ %(price)s", { qty: num(f.qty), price: num(f.price) }),
    }));
  chart.markers.setMarkers(marks);
}

const DEPTH_BAND = 0.05;  // the depth chart shows prices within ±5 % of the mid price
function drawDepth() { // cumulative quantity per price, bids left (green), asks right (red)
  const c = $("depth"), g = c.getContext("2d");
  const cum = (levels) => { let t = 0; return levels.map(([p, q]) => [p, (t += parseFloat(q))]); };
  let bids = cum(sortedLevels(state.book.bids, true).slice(0, 50));
  let asks = cum(sortedLevels(state.book.asks, false).slice(0, 50));
  g.clearRect(0, 0, c.width, c.height);
  if (!bids.length && !asks.length) { chart.depth = { bids, asks }; g.fillStyle = "#7a8a99"; g.fillText(_("empty book"), 10, 20); return; }
  const prices = [...bids, ...asks].map((l) => parseFloat(l[0]));
  let lo = Math.min(...prices), hi = Math.max(...prices);
  if (bids.length && asks.length) { // centred on the mid price, as traders expect
    // at most DEPTH_BAND of the mid price either side: one far order would squeeze the book into a
    // sliver; levels past the band are left out of the drawing (the table still lists them)
    const bestBid = parseFloat(bids[0][0]), bestAsk = parseFloat(asks[0][0]), mid = (bestBid + bestAsk) / 2;
    const w = Math.max(Math.min(Math.max(mid - lo, hi - mid), mid * DEPTH_BAND), (bestAsk - bestBid) / 2);  // the best levels always show
    lo = mid - w; hi = mid + w;
    bids = bids.filter(([p]) => parseFloat(p) >= lo);
    asks = asks.filter(([p]) => parseFloat(p) <= hi);
  }
  chart.depth = { bids, asks, lo, hi };
  const span = hi - lo || 1;
  const top = Math.max(...[...bids, ...asks].map((l) => l[1])) || 1;
  const x = (p) => 8 + ((parseFloat(p) - lo) / span) * (c.width - 16);
  const y = (q) => c.height - 14 - (q / top) * (c.height - 24);
  for (const [levels, line, fill] of [[bids, "#81c784", "rgba(129,199,132,.25)"], [asks, "#e57373", "rgba(229,115,115,.25)"]]) {
    if (!levels.length) continue;
    g.beginPath();
    g.moveTo(x(levels[0][0]), y(0));
    let prev = 0;
    for (const [p, q] of levels) { g.lineTo(x(p), y(prev)); g.lineTo(x(p), y(q)); prev = q; }
    g.lineTo(x(levels[levels.length - 1][0]), y(0));
    g.closePath();
    g.fillStyle = fill; g.fill(); g.strokeStyle = line; g.stroke();
  }
  g.fillStyle = "#7a8a99";
  const places = ((marketFilter("PRICE_FILTER", "tickSize") || "0.01").split(".")[1] || "").replace(/0+$/, "").length;
  const label = (v) => priceText(v.toFixed(places));  // an axis label, drawn from a float: display only
  g.fillText(label(lo), 8, c.height - 2);
  g.textAlign = "right"; g.fillText(label(hi), c.width - 8, c.height - 2); g.textAlign = "left";
}

// ---------------------------------------------------------------- private data

async function refreshPrivate() {
  if (!state.me || !state.symbol) return;
  try {
    const symbol = state.symbol;
    const [account, open, all, fills] = await Promise.all([
      api("GET", "/account", {}, true),
      api("GET", "/openOrders", { symbol }, true),
      api("GET", "/allOrders", { symbol, limit: "20" }, true),
      api("GET", "/myTrades", { symbol, limit: "500" }, true),
    ]);
    if (symbol === state.symbol) { state.fills = fills; drawFills(); }
    // every asset held, and the market's two even at zero; each row's total is that asset's own
    // free + locked (exact, BigInt): amounts of different assets are never added together
    const m = state.markets[state.symbol];
    const bal = $("balances").tBodies[0];
    bal.textContent = "";
    for (const b of account.balances) {
      const total = plus(b.free, b.locked);
      const inMarket = m && (b.asset === m.baseAsset || b.asset === m.quoteAsset);
      if (!inMarket && scaled(total) === 0n) continue;
      const row = bal.insertRow();
      row.dataset.asset = b.asset;
      row.dataset.free = b.free; row.dataset.locked = b.locked; row.dataset.total = total;
      cell(row, b.asset); amountCell(row, b.free, "free", true); amountCell(row, b.locked, "locked", true);
      amountCell(row, total, "total", true); cell(row, "", "fiat");
    }
    refreshFiat();
    const oo = $("open-orders").tBodies[0];
    oo.textContent = "";
    for (const o of open) {
      const row = oo.insertRow();
      row.dataset.orderId = o.orderId;
      cell(row, o.orderId); cell(row, statusText(o.side)); cell(row, orderPrice(o)); amountCell(row, o.origQty); amountCell(row, o.executedQty);
      const btn = document.createElement("button");
      btn.textContent = _("Cancel");
      btn.className = "cancel";
      btn.addEventListener("click", () => cancelOrder(o.orderId));
      row.insertCell().appendChild(btn);
    }
    const hist = $("history").tBodies[0];
    hist.textContent = "";
    for (const o of all.slice().reverse()) {
      const row = hist.insertRow();
      cell(row, o.orderId); cell(row, statusText(o.side)); cell(row, orderPrice(o)); amountCell(row, o.origQty); cell(row, statusText(o.status));
    }
  } catch (e) {
    status(e.message, true);
  }
}

// ---------------------------------------------------------------- fiat values (display only)

function plus(a, b) { // two decimal strings with the same decimals -> their sum, exactly (BigInt)
  const decimals = (a.split(".")[1] || "").length;
  const digits = (scaled(a) + scaled(b)).toString().padStart(decimals + 1, "0");
  return decimals ? digits.slice(0, -decimals) + "." + digits.slice(-decimals) : digits;
}

async function refreshFiat() { // each shown balance (free + locked) in the chosen fiat currency, from the rates feed
  const rows = [...$("balances").tBodies[0].rows];
  if (!rows.length) { $("fiat-total").textContent = ""; $("fiat-incomplete").hidden = true; return; }
  const amounts = rows.map((r) => `${r.dataset.asset}:${r.dataset.total}`).join(",");
  try {
    const v = await api("GET", "/v1/fiat/value", { amounts, currency: window.rfI18n.fiat, locale: window.rfI18n.locale });
    for (const [i, r] of rows.entries()) {
      const cellEl = r.querySelector("td.fiat");
      if (cellEl) cellEl.textContent = v.rows[i] && v.rows[i].valueFormatted !== null ? v.rows[i].valueFormatted : _("no rate");
    }
    $("fiat-total").textContent = v.totalFormatted + (v.complete ? "" : " *");
    $("fiat-total").dataset.minor = v.totalMinor;
    $("fiat-incomplete").hidden = v.complete;  // what the "*" means
  } catch (e) {
    $("fiat-total").textContent = _("no rate");
    $("fiat-incomplete").hidden = true;
  }
}

async function openUserStream() {
  try {
    const { listenKey } = await api("POST", "/userDataStream", {}, true);
    if (!listenKey) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    if (state.userWs) state.userWs.close();
    state.userWs = new WebSocket(`${proto}://${location.host}/ws/${listenKey}`);
    state.userWs.onmessage = () => refreshPrivate();
  } catch (e) { /* the dashboard still refreshes after each action */ }
}

function status(text, error) {
  const el = $("order-status");
  el.textContent = text;
  el.className = error ? "error" : "ok";
}

function showPriceField() { // a market order has no price: the field goes away rather than being ignored
  const market = $("otype").value === "MARKET";
  $("price-label").hidden = market;
  $("price").disabled = market;
}

async function placeOrder(ev) {
  ev.preventDefault();
  const type = $("otype").value;
  const params = { symbol: state.symbol, side: $("side").value, type, quantity: $("qty").value.trim() };
  if (type !== "MARKET") params.price = $("price").value.trim();
  if (type === "LIMIT") params.timeInForce = "GTC";
  try {
    const o = await api("POST", "/order", params, true);
    status(_("order %(id)s: %(status)s", { id: o.orderId, status: statusText(o.status) }), false);
  } catch (e) {
    status(e.message, true);
  }
  refreshPrivate();
}

async function cancelOrder(orderId) {
  try {
    const o = await api("DELETE", "/order", { symbol: state.symbol, orderId: String(orderId) }, true);
    status(_("order %(id)s: %(status)s", { id: o.orderId, status: statusText(o.status) }), false);
  } catch (e) {
    status(e.message, true);
  }
  refreshPrivate();
}

// ---------------------------------------------------------------- the web session

async function loadSession() {
  try {
    state.me = await api("GET", "/me", {}, true);
  } catch (e) {
    state.me = state.csrf = null;
    $("whoami").textContent = e.status === 401 ? _("not signed in") : _("session: %(error)s", { error: e.message });
    $("signed-out").hidden = false;
    $("signed-in").hidden = true;
    return;
  }
  state.csrf = state.me.csrfToken;
  $("whoami").textContent = _("signed in as %(email)s", { email: state.me.email });
  $("logout-csrf").value = state.csrf;
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
  $("demo-funds").hidden = !state.me.demoFunds;
  const canTrade = state.me.scopes.includes("trade");
  $("place").disabled = !canTrade;
  // a first factor counts only once its e-mailed link is confirmed: say so rather than "turn it on"
  const pending = Boolean(state.me.secondFactorPending);
  $("trade-hint").hidden = canTrade || pending;
  $("trade-hint-pending").hidden = canTrade || !pending;
  openUserStream();
  refreshPrivate();
}

async function signOut(ev) {
  // Posted with fetch, not as a form: the dashboard is served with `Referrer-Policy: no-referrer`,
  // under which Chromium sends form posts with `Origin: null`, which the sign-in pages refuse.
  ev.preventDefault();
  try {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": state.csrf || "" } });
  } finally {
    location.assign("/login");
  }
}

async function getDemoFunds() {
  try {
    const r = await api("POST", "/demoFunds", {}, true);
    // the answer's `msg` is English (the API's text); the page says it in its own language
    status(r.funded ? _("Demo funds added: %(funds)s.", { funds: r.funds }) : _("You already have your demo funds: %(funds)s.", { funds: r.funds }), false);
  } catch (e) {
    status(e.message, true);
  }
  refreshPrivate();
}

async function refreshHalts() {
  try {
    const halts = await (await fetch("/v1/halts")).json();
    const el = $("halts");
    el.hidden = halts.length === 0;
    el.textContent = halts.map((h) => `${h.level} (${h.scope_kind} ${h.scope}): ${h.reason}`).join(" · ");
  } catch (e) { /* shown again on the next refresh */ }
}

function openHaltStream() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/!halts`);
  ws.onmessage = () => refreshHalts();
}

window.addEventListener("DOMContentLoaded", async () => {
  await window.rfI18n.ready;  // the catalogue first: everything below draws text
  initChart();
  refreshHalts();
  openHaltStream();
  $("order-form").addEventListener("submit", placeOrder);
  $("otype").addEventListener("change", showPriceField);
  showPriceField();
  $("demo-funds").addEventListener("click", getDemoFunds);
  $("logout-form").addEventListener("submit", signOut);
  loadSession();
  loadMarkets().catch((e) => status(e.message, true));
  setInterval(refreshPrivate, 5000);
});
