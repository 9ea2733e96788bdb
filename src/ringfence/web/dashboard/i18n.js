// The dashboard's language and fiat currency (docs/i18n.md). The page is served in the chosen language
// (<meta name="rf-locale">); the strings this script's pages draw come from the same gettext catalogue as
// JSON (/i18n/catalog/<locale>.json: the CSP forbids an inline one). Numbers stay decimal strings: `num`
// writes one in the locale's digits and decimal sign, every decimal kept (Intl formats a string exactly),
// without group separators; `stepped` writes a market's price or quantity at its tick or step size, grouped.
"use strict";
window.rfI18n = (() => {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const locale = meta("rf-locale") || "en";
  const fiat = meta("rf-fiat") || "USD";
  // Latin digits in every language, as the server's formatting (Babel) writes them
  const intlLocale = locale.replace("_", "-") + (locale === "ar" ? "-u-nu-latn" : "");
  let messages = {};
  const ready = locale === "en" ? Promise.resolve() : fetch(`/i18n/catalog/${encodeURIComponent(locale)}.json`)
    .then((r) => (r.ok ? r.json() : { messages: {} }))
    .then((c) => { messages = c.messages || {}; })
    .catch(() => { /* English, the message ids themselves */ });
  function _(message, params) {
    let text = messages[message] || message;
    if (params) text = text.replace(/%\((\w+)\)s/g, (m, k) => String(params[k]));
    return text;
  }
  // One Intl.NumberFormat per (grouping, decimals), made on first use; a decimal string is formatted
  // as written (never through a float), and anything Intl refuses is shown as it came.
  const formats = new Map();
  function decimalText(text, decimals, grouping) {
    const key = `${grouping}:${decimals}`;
    if (!formats.has(key)) {
      formats.set(key, new Intl.NumberFormat(intlLocale, { useGrouping: grouping, minimumFractionDigits: decimals, maximumFractionDigits: decimals }));
    }
    try { return formats.get(key).format(text); } catch (e) { return text; }
  }
  function num(s) {
    if (s === undefined || s === null || s === "") return s;
    const text = String(s);
    return decimalText(text, (text.split(".")[1] || "").length, false);
  }
  // Amounts on screen: at most DISPLAY_DECIMALS_MAX decimals (ETH has 18 in the ledger; nobody reads them),
  // cut on the decimal string (never a float), so what shows is never more than what is held; a cut that
  // dropped non-zero digits ends in "…" (a cell's title may hold the exact amount). `trim` also drops
  // trailing zeros down to two decimals (balances: "1000.00", not "1000.000000").
  const DISPLAY_DECIMALS_MAX = 8;
  function shown(s, trim) {
    if (s === undefined || s === null || s === "") return { text: s, exact: true };
    const [whole, frac = ""] = String(s).split(".");
    let keep = frac.slice(0, DISPLAY_DECIMALS_MAX);
    const exact = /^0*$/.test(frac.slice(DISPLAY_DECIMALS_MAX));
    if (trim) keep = keep.replace(/0+$/, "").padEnd(Math.min(2, frac.length), "0");
    return { text: keep ? `${whole}.${keep}` : whole, exact };
  }
  function amount(s, trim) { const a = shown(s, trim); return a.exact ? num(a.text) : num(a.text) + "…"; }
  // A market's price or quantity at its tick or step size ("0.01000000" -> 2 decimals), with the locale's
  // group separators ("2,999.98"): the order book and the trades read like a trading screen. Digits past
  // the step are cut only when they are zeros (a price is a whole number of ticks), so nothing shown is
  // ever other than the exact value.
  function stepped(s, step) {
    if (s === undefined || s === null || s === "" || !step) return num(s);
    const places = (String(step).split(".")[1] || "").replace(/0+$/, "").length;
    const [whole, frac = ""] = String(s).split(".");
    const keep = /^0*$/.test(frac.slice(places)) ? frac.slice(0, places).padEnd(places, "0") : frac;
    return decimalText(keep ? `${whole}.${keep}` : whole, keep.length, true);
  }
  function time(ms) { return new Date(ms).toLocaleTimeString(intlLocale); }
  // A date and time (UTC) as the server's pages write one (ringfence.i18n.format_time: the locale's
  // medium date and time, then "UTC"), so every page shows times one way.
  const dateTimeFormat = new Intl.DateTimeFormat(intlLocale, { dateStyle: "medium", timeStyle: "medium", timeZone: "UTC" });
  function dateTime(ms) {
    const d = typeof ms === "string" ? new Date(ms.replace(" ", "T") + (/[zZ]|[+-]\d\d:?\d\d$/.test(ms) ? "" : "Z")) : new Date(ms);
    return isNaN(d.getTime()) ? String(ms) : dateTimeFormat.format(d) + " UTC";
  }
  // A length of time in words ("10 minutes", "1 day"), from whole seconds: the largest unit of which
  // there is at least one, rounded, as the server's pages and mails write it (Babel's format_timedelta).
  const UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  function duration(seconds) {
    const s = Math.max(0, Math.floor(Number(seconds) || 0));
    const [unit, size] = UNITS.find(([, n]) => s >= n) || UNITS[UNITS.length - 1];
    return new Intl.NumberFormat(intlLocale, { style: "unit", unit, unitDisplay: "long" }).format(s ? Math.max(1, Math.round(s / size)) : 0);
  }
  document.addEventListener("DOMContentLoaded", () => {  // the selectors send the choice as soon as it changes
    for (const id of ["lang-select", "fiat-select"]) {
      const el = document.getElementById(id);
      if (el) el.addEventListener("change", () => el.form.submit());
    }
  });
  return { _, num, amount, stepped, time, dateTime, duration, locale, intlLocale, fiat, ready };
})();
