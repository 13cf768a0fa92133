// The submission page while it is graded: htmx swaps #submission-status every second (hx-trigger="every 1s")
// until the server answers 286 with the results. This file only tells screen readers what changed, once per
// change (queued -> running test i/n -> graded), through the polite live region #live-announcer: announcing
// every swap would read the ticking clock aloud every second.
"use strict";

(function () {
  let lastAnnounced = null;

  function announce(root) {
    const status = root.id === "submission-status" ? root : root.querySelector("#submission-status");
    const announcer = document.getElementById("live-announcer");
    if (!status || !announcer) {
      return;
    }
    const text = status.dataset.announce || "";
    if (lastAnnounced === null) {
      lastAnnounced = text; // the state the page loaded with is already on screen and read with it
      return;
    }
    if (text && text !== lastAnnounced) {
      announcer.textContent = text;
      lastAnnounced = text;
    }
  }

  document.addEventListener("DOMContentLoaded", () => announce(document));
  // outerHTML swaps replace the element htmx reports, so look it up again in the document.
  document.addEventListener("htmx:afterSettle", () => announce(document));
})();
