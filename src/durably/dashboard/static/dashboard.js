// durably dashboard: live fragments and the fork editor's JSON check. No framework, no CDN.
"use strict";

function openDetails(root) {
  return Array.from(root.querySelectorAll("details"))
    .map((d, i) => (d.open ? (d.closest("[id]") || {}).id + ":" + i : null))
    .filter(Boolean);
}

function restoreDetails(root, open) {
  root.querySelectorAll("details").forEach((d, i) => {
    if (open.includes((d.closest("[id]") || {}).id + ":" + i)) d.open = true;
  });
}

function poll(el, every) {
  let timer = null;
  const tick = async () => {
    if (!document.hidden) {
      try {
        const response = await fetch(el.dataset.live, { headers: { "X-Requested-With": "fetch" } });
        if (response.ok) {
          const open = openDetails(el);
          el.innerHTML = await response.text();
          restoreDetails(el, open);
          el.dispatchEvent(new CustomEvent("durably:updated", { bubbles: true }));
          if (el.querySelector('[data-finished="1"]')) return; // finished: nothing more comes
        }
      } catch (err) {
        // The dashboard restarted or the network blinked: try again at the next tick.
      }
    }
    timer = setTimeout(tick, every);
  };
  timer = setTimeout(tick, every);
  return () => clearTimeout(timer);
}

function checkJson(editor, out) {
  const check = () => {
    try {
      const value = JSON.parse(editor.value);
      out.textContent = value !== null && typeof value === "object" && !Array.isArray(value)
        ? "" : "the context must be a JSON object";
    } catch (err) {
      out.textContent = "not valid JSON: " + err.message;
    }
  };
  editor.addEventListener("input", check);
}

document.addEventListener("DOMContentLoaded", () => {
  const every = parseInt(document.body.dataset.pollMs || "2000", 10);
  document.querySelectorAll("[data-live]").forEach((el) => {
    if (!el.dataset.done) poll(el, every);
  });
  const editor = document.getElementById("context-editor");
  const out = document.getElementById("json-check");
  if (editor && out) checkJson(editor, out);
});
