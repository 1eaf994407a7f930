/* One's own API tokens: a new token is shown once, here, and the page is not reloaded
 * until the user has taken it (a reload would lose it for good). */
"use strict";

(function () {
  async function create(event) {
    event.preventDefault();
    const form = event.target;
    const { api, formError } = window.caduceus;
    formError(form, "");
    try {
      const answer = await api("POST", "/api/tokens", { name: form.elements.name.value });
      document.getElementById("token-created-name").textContent = answer.name;
      document.getElementById("token-value").textContent = answer.token;
      document.getElementById("token-created").hidden = false;
      form.reset();
      form.hidden = true;
    } catch (error) {
      formError(form, error.message);
    }
  }

  async function copy() {
    const value = document.getElementById("token-value").textContent;
    try {
      await navigator.clipboard.writeText(value);
      window.caduceus.flash("Copied.");
    } catch (e) {
      // Without the clipboard (plain HTTP), select it so that Ctrl-C copies it.
      const range = document.createRange();
      range.selectNodeContents(document.getElementById("token-value"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.addEventListener("submit", create);
    document.getElementById("token-copy").addEventListener("click", copy);
  });
})();
