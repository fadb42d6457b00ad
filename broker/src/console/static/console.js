// Palisade console: the few things a page needs a script for. Served by the
// broker itself (script-src 'self'); the pages work without it except for
// the WebAuthn ceremony of "Add a passkey".
"use strict";

(function () {
  async function postJson(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body === undefined ? {} : body),
    });
    const json = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(json.message || "the broker refused the request");
    return json;
  }

  async function addPasskey(button, status) {
    button.disabled = true;
    status.textContent = "Waiting for your passkey or security key…";
    try {
      const options = await postJson("/api/v1/me/credentials/register/start");
      const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey);
      const credential = await navigator.credentials.create({ publicKey });
      await postJson("/api/v1/me/credentials/register/finish", credential.toJSON());
      status.textContent = "Passkey added.";
      window.location.reload();
    } catch (e) {
      status.textContent = (e && e.message) || "could not add the passkey";
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const add = document.getElementById("add-passkey");
    const status = document.getElementById("passkey-status");
    if (add && status) add.addEventListener("click", () => addPasskey(add, status));
  });
})();
