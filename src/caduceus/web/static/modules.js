/* Modules pages: settings checked as they are typed (a JSON object), and the test run,
 * which queues a task and links to it. Messages are text, never markup. */
"use strict";

(function () {
  function problemOf(text) {
    if (text.trim() === "") return "";
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return "not valid JSON: " + e.message;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return "must be a JSON object ({...})";
    }
    return "";
  }

  function check(area) {
    const problem = problemOf(area.value);
    const slot = document.getElementById(area.id + "-error");
    area.setAttribute("aria-invalid", problem ? "true" : "false");
    if (slot) {
      slot.textContent = problem;
      slot.hidden = !problem;
    }
  }

  document.addEventListener("input", function (event) {
    if (event.target.matches("textarea[data-json-object]")) check(event.target);
  });

  function resultFor(name) {
    return Array.from(document.querySelectorAll("output[data-test-result-for]")).find(
      function (el) { return el.dataset.testResultFor === name; }
    );
  }

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-test-module]");
    if (!button) return;
    event.preventDefault();
    const name = button.dataset.testModule;
    const slot = resultFor(name);
    button.disabled = true;
    try {
      const answer = await window.caduceus.api(
        "POST", "/api/modules/" + encodeURIComponent(name) + "/test"
      );
      if (slot) {
        const link = document.createElement("a");
        link.href = "/tasks/" + encodeURIComponent(answer.task_id);
        link.textContent = "task " + answer.task_id;
        slot.className = "module-test-result ok-text";
        slot.replaceChildren("Test run queued: ", link);
      }
      window.caduceus.flash("Test run of " + name + " queued.");
    } catch (error) {
      if (slot) {
        slot.className = "module-test-result error-text";
        slot.textContent = error.message;
      }
    } finally {
      button.disabled = false;
    }
  });
})();
