/* Targets pages: the connection test. The answer (ok or not, and why) is shown beside the
 * button as text; it may quote what a remote system said, so it never goes into markup. */
"use strict";

(function () {
  function resultFor(name) {
    return Array.from(document.querySelectorAll("output[data-test-result-for]")).find(
      function (el) { return el.dataset.testResultFor === name; }
    );
  }

  function show(slot, ok, message) {
    if (!slot) return;
    slot.textContent = (ok ? "✓ " : "✗ ") + message;
    slot.className = "target-test-result " + (ok ? "ok-text" : "error-text");
  }

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-test-target]");
    if (!button) return;
    event.preventDefault();
    const name = button.dataset.testTarget;
    const slot = resultFor(name);
    if (slot) {
      slot.textContent = "testing …";
      slot.className = "target-test-result muted";
    }
    button.disabled = true;
    try {
      const answer = await window.caduceus.api(
        "POST", "/api/targets/" + encodeURIComponent(name) + "/test"
      );
      show(slot, answer.ok, answer.message);
    } catch (error) {
      show(slot, false, error.message);
    } finally {
      button.disabled = false;
    }
  });
})();
