// Passkey (WebAuthn) glue for the identity pages. Loaded as a file: the CSP forbids inline script.
"use strict";
function b64urlToBuf(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  const bin = atob(s); const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}
function bufToB64url(buf) {
  const bytes = new Uint8Array(buf); let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
// The page's language: its catalogue as JSON (/i18n/catalog/<locale>.json; the CSP forbids an inline one).
const I18N = { messages: {} };
function _(message, params) {
  let text = I18N.messages[message] || message;
  if (params) text = text.replace(/%\((\w+)\)s/g, (m, k) => String(params[k]));
  return text;
}
async function loadCatalogue() {
  const lang = (document.documentElement.lang || "en").replace("-", "_");
  if (lang === "en") return;
  try {
    const r = await fetch("/i18n/catalog/" + encodeURIComponent(lang) + ".json");
    if (r.ok) I18N.messages = (await r.json()).messages;
  } catch (e) { /* English, the message ids themselves */ }
}
function localTime(iso) { // a timestamp as the page's language writes it (Latin digits, as the server's Babel formats)
  const lang = document.documentElement.lang || "en";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(lang + (lang === "ar" ? "-u-nu-latn" : ""), { dateStyle: "medium", timeStyle: "medium" });
}
function csrf() { const m = document.querySelector('meta[name="csrf-token"]'); return m ? m.content : ""; }
async function post(url, body) {
  const r = await fetch(url, { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() }, body: body === undefined ? "" : body });
  const data = await r.json();
  if (!r.ok) throw new Error(data.message || "request failed");
  return data;
}
function showError(e) { const p = document.getElementById("passkey-error"); if (p) p.textContent = e.message || String(e); }
async function passkeyGet(optionsUrl, finishUrl) {
  const o = await post(optionsUrl);
  o.challenge = b64urlToBuf(o.challenge);
  (o.allowCredentials || []).forEach(c => { c.id = b64urlToBuf(c.id); });
  const cred = await navigator.credentials.get({ publicKey: o });
  const body = JSON.stringify({ id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type, response: {
    clientDataJSON: bufToB64url(cred.response.clientDataJSON),
    authenticatorData: bufToB64url(cred.response.authenticatorData),
    signature: bufToB64url(cred.response.signature),
    userHandle: cred.response.userHandle ? bufToB64url(cred.response.userHandle) : null } });
  const done = await post(finishUrl, body);
  window.location.href = done.redirect;
}
async function passkeyCreate() {
  const o = await post("/webauthn/register/options");
  o.challenge = b64urlToBuf(o.challenge);
  o.user.id = b64urlToBuf(o.user.id);
  (o.excludeCredentials || []).forEach(c => { c.id = b64urlToBuf(c.id); });
  const cred = await navigator.credentials.create({ publicKey: o });
  const label = (document.getElementById("passkey-label") || {}).value || "passkey";
  const body = JSON.stringify({ label: label, credential: { id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type,
    response: { clientDataJSON: bufToB64url(cred.response.clientDataJSON),
                attestationObject: bufToB64url(cred.response.attestationObject) } } });
  const done = await post("/webauthn/register", body);
  window.location.href = done.redirect;
}
// The security centre's "your proof" box: which published proof holds the user's balances (on the session),
// and a check of the user's own inclusion proof in the browser with the offline verifier (/por/verifier.js).
async function loadOwnProof() {
  const status = document.getElementById("proof-status");
  if (!status) return;
  const r = await fetch("/session/v3/por/mine", { credentials: "same-origin" });
  const mine = await r.json();
  if (!r.ok) { status.textContent = mine.msg || _("Your proof could not be loaded."); return; }
  if (!mine.included) {
    status.textContent = (mine.n ? _("Your balances are not in proof #%(n)s:", { n: mine.n }) + " " : "") + (mine.msg || "") +
      (mine.everyS ? " " + _("A new proof is published every %(seconds)s s.", { seconds: mine.everyS }) : "");
    status.dataset.state = "absent";
    return;
  }
  status.textContent = mine.publishedAt ? _("Your balances are in proof #%(n)s (published %(time)s).", { n: mine.n, time: localTime(mine.publishedAt) })
    : _("Your balances are in proof #%(n)s.", { n: mine.n });
  status.dataset.n = mine.n;
  status.dataset.state = "included";
  document.getElementById("download-proof").href = mine.downloadUrl;
  document.getElementById("proof-root").href = mine.rootUrl;
  document.getElementById("proof-actions").hidden = false;
  document.getElementById("verify-proof").addEventListener("click", () => verifyOwnProof(mine).catch((e) => {
    const v = document.getElementById("proof-verdict"); v.textContent = "por: INVALID: " + e.message; v.className = "error"; v.dataset.done = "1";
  }));
}
function decimalAmount(minor, decimals) { // "150000000", 8 -> "1.5": exact (string digits, never a float), trailing zeros dropped
  const digits = String(minor).padStart(decimals + 1, "0");
  if (!decimals) return digits;
  const frac = digits.slice(-decimals).replace(/0+$/, "");
  return digits.slice(0, -decimals) + (frac ? "." + frac : "");
}
async function verifyOwnProof(mine) {
  const verdict = document.getElementById("proof-verdict");
  verdict.textContent = _("Verifying…"); verdict.className = ""; delete verdict.dataset.done;
  const [proof, root] = await Promise.all([mine.proofUrl, mine.rootUrl].map(async (url) => {
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) throw new Error(url + " answered " + r.status);
    return r.text();
  }));
  const result = await window.ringfencePor.verify(proof, root);
  const out = document.getElementById("proof-output");
  out.textContent = result.lines.join("\n"); document.getElementById("proof-details").hidden = false;
  // the balances as amounts with their asset codes (the proof holds minor units; /mine says the decimals)
  const table = document.getElementById("proof-balances");
  const body = table.tBodies[0];
  body.textContent = "";
  for (const b of result.ok ? result.balances : []) {
    const row = body.insertRow();
    row.dataset.asset = b.asset; row.dataset.minor = b.minor;
    row.insertCell().textContent = b.asset;
    const decimals = (mine.decimals || {})[b.asset];
    row.insertCell().textContent = decimals === undefined ? _("%(minor)s (minor units)", { minor: b.minor }) : decimalAmount(b.minor, decimals) + " " + b.asset;
  }
  table.hidden = !body.rows.length;
  verdict.textContent = result.ok ? _("Verified: your balances are included in proof #%(n)s (por: VALID).", { n: mine.n }) : result.lines[result.lines.length - 1];
  verdict.className = result.ok ? "valid" : "error";
  verdict.dataset.ok = result.ok ? "1" : "0";
  verdict.dataset.done = "1";
}
// The language selector (every page): send the choice as soon as it changes (the button stays for no-script use).
function bindLanguageSelector() {
  const select = document.getElementById("lang-select");
  if (select) select.addEventListener("change", () => select.form.submit());
}
document.addEventListener("DOMContentLoaded", async () => {
  bindLanguageSelector();
  await loadCatalogue();
  loadOwnProof().catch((e) => { const s = document.getElementById("proof-status"); if (s) s.textContent = e.message; });
  // The passkey buttons are served disabled and come alive here, once their handler is bound: a click that
  // lands before the script has run would otherwise do nothing at all.
  const bind = (id, fn) => {
    const el = document.getElementById(id);
    if (!el) return;
    el.addEventListener("click", () => fn().catch(showError));
    el.disabled = false;
  };
  // back to the page that sent the user to sign in (`?next=`; the server accepts only a path on this site)
  bind("passkey-login", () => passkeyGet("/webauthn/login/options", "/webauthn/login" + location.search));
  bind("step-up-passkey", () => passkeyGet("/webauthn/step-up/options", "/webauthn/step-up"));
  bind("add-passkey", passkeyCreate);
});
