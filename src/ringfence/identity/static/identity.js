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
document.addEventListener("DOMContentLoaded", () => {
  const bind = (id, fn) => { const el = document.getElementById(id); if (el) el.addEventListener("click", () => fn().catch(showError)); };
  bind("passkey-login", () => passkeyGet("/webauthn/login/options", "/webauthn/login"));
  bind("step-up-passkey", () => passkeyGet("/webauthn/step-up/options", "/webauthn/step-up"));
  bind("add-passkey", passkeyCreate);
});
