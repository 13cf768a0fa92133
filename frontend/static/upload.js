// The upload form on the assignment page: drag and drop onto the file picker's zone, early checks of names,
// sizes and counts (the server checks everything again), and sending without leaving the page, so a refused
// upload shows its reason while the chosen files stay chosen. Without this file the form posts normally.
"use strict";

(function () {
  function readConfig() {
    const element = document.getElementById("upload-config");
    return element ? JSON.parse(element.textContent) : null;
  }

  // fnmatch-style: * and ? never cross a "/", ** does; only a pattern's last part is compared with a file's name.
  function patternToRegExp(pattern) {
    const last = pattern.split("/").pop();
    let source = "";
    for (let i = 0; i < last.length; i += 1) {
      const char = last[i];
      if (char === "*" && last[i + 1] === "*") {
        source += ".*";
        i += 1;
      } else if (char === "*") {
        source += "[^/]*";
      } else if (char === "?") {
        source += "[^/]";
      } else {
        source += char.replace(/[\\^$.*+?()[\]{}|]/g, "\\$&");
      }
    }
    return new RegExp("^" + source + "$");
  }

  function isArchive(name, config) {
    const lower = name.toLowerCase();
    return config.archives.some((suffix) => lower.endsWith(suffix));
  }

  // The first problem with the chosen files, as a sentence, or null when they may be sent.
  function problem(files, config) {
    const messages = config.messages;
    if (files.length === 0 || Array.from(files).every((file) => file.size === 0)) {
      return messages.empty;
    }
    let total = 0;
    const patterns = config.allowed.map(patternToRegExp);
    const single = files.length === 1 && isArchive(files[0].name, config);
    for (const file of files) {
      total += file.size;
      if (!single && !patterns.some((pattern) => pattern.test(file.name))) {
        return file.name + ": " + messages.name_not_allowed;
      }
      if (!single && file.size > config.max_file_bytes) {
        return file.name + ": " + messages.file_too_large;
      }
    }
    if (!single && files.length > config.max_files) {
      return messages.too_many_files;
    }
    if (total > config.max_upload_bytes) {
      return messages.too_large;
    }
    return null;
  }

  function setup() {
    const form = document.getElementById("upload-form");
    const config = readConfig();
    if (!form || !config) {
      return;
    }
    const input = document.getElementById("upload-files");
    const zone = document.getElementById("dropzone");
    const list = document.getElementById("upload-selected");
    const errorBox = document.getElementById("upload-error");
    const button = document.getElementById("upload-submit");
    const buttonText = button.textContent;

    function showError(text) {
      errorBox.replaceChildren();
      const paragraph = document.createElement("p");
      paragraph.textContent = text;
      errorBox.append(paragraph);
      errorBox.hidden = false;
      input.setAttribute("aria-invalid", "true");
    }

    function clearError() {
      errorBox.replaceChildren();
      errorBox.hidden = true;
      input.removeAttribute("aria-invalid");
    }

    function showSelection() {
      list.replaceChildren();
      for (const file of input.files) {
        const item = document.createElement("li");
        item.textContent = file.name + " (" + Math.ceil(file.size / 1024) + " KiB)";
        list.append(item);
      }
      const found = problem(input.files, config);
      if (found && input.files.length) {
        showError(found);
      } else {
        clearError();
      }
    }

    input.addEventListener("change", showSelection);

    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("over");
      });
    }
    for (const name of ["dragleave", "dragend"]) {
      zone.addEventListener(name, () => zone.classList.remove("over"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        showSelection();
        input.focus();
      }
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const found = problem(input.files, config);
      if (found) {
        showError(found);
        input.focus();
        return;
      }
      clearError();
      button.disabled = true;
      button.textContent = config.messages.sending;
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: new FormData(form),
          credentials: "same-origin",
        });
        if (response.ok && response.redirected) {
          window.location.assign(response.url);
          return;
        }
        const type = response.headers.get("content-type") || "";
        if (type.startsWith("text/html")) {
          // The server re-rendered the assignment page with the reason; take only the reason from it.
          const page = new DOMParser().parseFromString(await response.text(), "text/html");
          const reason = page.getElementById("upload-error");
          if (response.ok && !reason) {
            window.location.assign(response.url);
            return;
          }
          if (reason && reason.childElementCount) {
            errorBox.replaceChildren(...Array.from(reason.childNodes).map((node) => document.importNode(node, true)));
            errorBox.hidden = false;
            input.setAttribute("aria-invalid", "true");
            // app.js shows <time> elements in the viewer's zone after every swap; this is one too.
            errorBox.dispatchEvent(new CustomEvent("htmx:afterSwap", { bubbles: true }));
          } else {
            const heading = page.querySelector("main h1");
            const message = page.querySelector("main [role=alert]");
            showError([heading, message].filter(Boolean).map((node) => node.textContent.trim()).join(": "));
          }
        } else {
          showError(response.status === 413 ? config.messages.server_too_large : config.messages.failed);
        }
      } catch (error) {
        showError(config.messages.failed);
      } finally {
        button.disabled = false;
        button.textContent = buttonText;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", setup);
})();
