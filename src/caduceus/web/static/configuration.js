/* Importing a configuration file: read it in the browser, have the server check it (and say
 * what a mercure.json holds that caduceus cannot use), and only then save it. Everything the
 * file says is shown as text, never as markup. */
"use strict";

(function () {
  let checked = null;

  function show(result) {
    document.getElementById("import-format").textContent =
      result.format === "mercure" ? "mercure.json (mercure's configuration)" : "caduceus";
    const counts = result.counts || {};
    document.getElementById("import-counts").textContent =
      (counts.rules || 0) + " rules, " + (counts.targets || 0) + " targets, " +
      (counts.modules || 0) + " modules";
    const list = document.getElementById("import-not-mapped-list");
    list.replaceChildren();
    (result.not_mapped || []).forEach(function (line) {
      const item = document.createElement("li");
      item.textContent = line;
      list.appendChild(item);
    });
    document.getElementById("import-not-mapped").hidden = list.children.length === 0;
    document.getElementById("import-result").hidden = false;
  }

  async function check(event) {
    event.preventDefault();
    const form = event.target;
    const { formError, api } = window.caduceus;
    formError(form, "");
    document.getElementById("import-result").hidden = true;
    checked = null;
    const file = form.elements.file.files[0];
    if (!file) return;
    let document_;
    const text = await file.text();
    if (/\.json$/i.test(file.name)) {
      try {
        document_ = JSON.parse(text);
      } catch (error) {
        formError(form, file.name + " is not a JSON file: " + error.message);
        return;
      }
    } else {
      // YAML: the server reads it (safely) and hands the document back to be checked.
      try {
        document_ = (await api("POST", "/api/config/read", { text: text })).document;
      } catch (error) {
        formError(form, file.name + ": " + error.message);
        return;
      }
    }
    try {
      show(await api("POST", "/api/config/validate", document_));
      checked = { document: document_, name: file.name };
      const comment = document.getElementById("import-comment");
      if (!comment.value) comment.value = "imported " + file.name;
    } catch (error) {
      formError(form, error.message);
    }
  }

  async function save(event) {
    event.preventDefault();
    const form = event.target;
    const { formError, api, flash } = window.caduceus;
    formError(form, "");
    if (!checked) return;
    const comment = form.elements.comment.value;
    try {
      const answer = await api(
        "PUT", "/api/config?comment=" + encodeURIComponent(comment), checked.document);
      flash(answer.changed ? "Saved as version " + answer.version + "."
                           : "Nothing changed: version " + answer.version + " is the same.");
      setTimeout(function () { window.location.assign("/configuration"); }, 800);
    } catch (error) {
      formError(form, error.message);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("import-form");
    if (!form) return;
    form.addEventListener("submit", check);
    document.getElementById("import-save").addEventListener("submit", save);
    form.elements.file.addEventListener("change", function () {
      document.getElementById("import-result").hidden = true;
      checked = null;
    });
  });
})();
