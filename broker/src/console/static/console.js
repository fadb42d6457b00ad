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

  // Tables sort by any column: click (or Enter / Space on) a header; again to
  // reverse. Numbers and sizes ("1.5 MiB") compare as numbers, the rest as text.
  // Tables paged on the server (data-server-sorted) are ordered there too:
  // their headers are links, so this leaves them alone.
  const UNITS = { B: 1, KiB: 1024, MiB: 1048576, GiB: 1073741824, TiB: 1099511627776 };
  function sortKey(text) {
    const t = text.trim();
    const sized = /^(-?[0-9][0-9.,]*)\s*(B|KiB|MiB|GiB|TiB)$/.exec(t);
    if (sized) return parseFloat(sized[1].replace(/,/g, "")) * UNITS[sized[2]];
    if (/^-?[0-9][0-9.,]*$/.test(t)) return parseFloat(t.replace(/,/g, ""));
    return t.toLowerCase();
  }
  function sortBy(table, column, header) {
    const body = table.tBodies[0];
    if (!body) return;
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = sortKey(a.cells[column] ? a.cells[column].textContent : "");
      const y = sortKey(b.cells[column] ? b.cells[column].textContent : "");
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
      return ascending ? order : -order;
    });
    for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    for (const row of rows) body.appendChild(row);
  }
  function sortable(table) {
    if (!table.tHead || !table.tHead.rows[0] || table.hasAttribute("data-server-sorted")) return;
    Array.from(table.tHead.rows[0].cells).forEach(function (th, column) {
      if (!th.textContent.trim()) return;
      th.tabIndex = 0;
      th.classList.add("sortable");
      th.title = "Sort this page by " + th.textContent.trim();
      th.addEventListener("click", () => sortBy(table, column, th));
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          sortBy(table, column, th);
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const add = document.getElementById("add-passkey");
    const status = document.getElementById("passkey-status");
    if (add && status) add.addEventListener("click", () => addPasskey(add, status));
    document.querySelectorAll("table").forEach(sortable);
  });
})();
