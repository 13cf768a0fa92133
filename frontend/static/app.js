// Progressive enhancement only: every page works without this file.
"use strict";

// Show each <time datetime="..."> in the viewer's own time zone (the server renders UTC and the course zone).
function localizeTimes(root) {
  const lang = document.documentElement.lang || undefined;
  const format = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "short" });
  for (const element of root.querySelectorAll("time[datetime]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime()) && !element.dataset.localized) {
      element.title = element.getAttribute("datetime");
      element.textContent = format.format(when);
      element.dataset.localized = "1";
    }
  }
}

document.addEventListener("DOMContentLoaded", () => localizeTimes(document));
document.addEventListener("htmx:afterSwap", (event) => localizeTimes(event.target));
