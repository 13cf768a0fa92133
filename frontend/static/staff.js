// Staff pages: small conveniences over forms that work without this file.
"use strict";

// Ask before a form marked data-confirm is sent (regrade, publish, unpublish).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// The late-policy fieldset shows only the fields of the chosen kind (all are shown without JavaScript).
function syncLatePolicy(fieldset) {
  const kind = fieldset.querySelector("#late_kind");
  if (!kind) return;
  for (const part of fieldset.querySelectorAll("[data-late-for]")) {
    const shown = part.dataset.lateFor.split(" ").includes(kind.value);
    part.hidden = !shown;
    part.style.display = shown ? "" : "none"; // flex layouts would otherwise ignore the hidden attribute
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const fieldset of document.querySelectorAll("[data-late-policy]")) {
    syncLatePolicy(fieldset);
    fieldset.addEventListener("change", () => syncLatePolicy(fieldset));
  }
  // After a refused form, take keyboard and screen-reader users to the list of what to fix.
  const summary = document.getElementById("error-summary");
  if (summary) summary.focus();
});
