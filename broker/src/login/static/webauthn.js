// Palisade sign-in: runs the WebAuthn ceremony the page's data-mode names
// against the broker's JSON endpoints, then follows {"redirect": URL}.
// Served by the broker itself (script-src 'self'); no inline script, no CDN.
"use strict";

(function () {
  const main = document.getElementById("mfa");
  const status = document.getElementById("status");
  const button = document.getElementById("go");
  if (!main || !status || !button) return;
  const mode = main.dataset.mode;

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body === undefined ? {} : body),
    });
    const json = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(json.message || "sign-in failed");
    return json;
  }

  async function register() {
    const options = await post("/login/webauthn/register/start");
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey);
    const credential = await navigator.credentials.create({ publicKey });
    return post("/login/webauthn/register/finish", credential.toJSON());
  }

  async function authenticate() {
    const options = await post("/login/webauthn/authenticate/start");
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey);
    const credential = await navigator.credentials.get({ publicKey });
    return post("/login/webauthn/authenticate/finish", credential.toJSON());
  }

  async function run() {
    button.disabled = true;
    status.textContent = "Waiting for your passkey or security key…";
    try {
      const answer = mode === "register" ? await register() : await authenticate();
      status.textContent = "Signed in.";
      window.location.assign(answer.redirect);
    } catch (e) {
      status.textContent = (e && e.message) || "sign-in failed";
      button.disabled = false;
    }
  }

  if (mode === "register") button.textContent = "Register a passkey";
  button.addEventListener("click", run);
})();
