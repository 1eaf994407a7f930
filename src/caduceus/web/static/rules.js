/* The rule editor: the expression is checked by the server as it is typed (the same parser
 * that refuses it on save), modules can be put in order, and the expression can be tried on
 * a received series. Every value from the server is shown with textContent, never as HTML. */
"use strict";

(function () {
  const DELAY_MS = 350;

  function api(method, path, body) {
    return window.caduceus.api(method, path, body);
  }

  /* -- the expression check ---------------------------------------------------------- */

  function setupCheck(field) {
    const box = document.getElementById("rule-expression-error");
    const message = box.querySelector("[data-check-message]");
    const caret = box.querySelector("[data-check-caret]");
    const keywords = box.querySelector("[data-check-keywords]");
    let timer = null;
    let asked = 0; // answers to older questions are dropped: typing goes on meanwhile

    function show(answer, text) {
      field.setAttribute("aria-invalid", answer.valid ? "false" : "true");
      message.hidden = answer.valid;
      caret.hidden = answer.valid || answer.position === null;
      keywords.hidden = !answer.valid || answer.keywords.length === 0;
      if (answer.valid) {
        keywords.textContent = "Reads the tags " + answer.keywords.join(", ") + ".";
        return;
      }
      message.textContent = answer.error;
      if (answer.position !== null) {
        // The line with the problem and a ^ under the character it is about.
        const lines = text.split("\n");
        const line = lines[(answer.line || 1) - 1] || "";
        caret.textContent = line + "\n" + " ".repeat(Math.max(0, (answer.column || 1) - 1)) + "^";
      }
    }

    async function check() {
      const text = field.value;
      const mine = ++asked;
      try {
        const answer = await api("POST", field.dataset.validate, { rule: text });
        if (mine === asked) show(answer, text);
      } catch (error) {
        if (mine !== asked) return;
        message.hidden = false;
        message.textContent = "The expression could not be checked: " + error.message;
      }
    }

    field.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(check, DELAY_MS);
    });
    if (field.value.trim() !== "") check();
  }

  /* -- module order ------------------------------------------------------------------- */

  /* The form sends the selected modules in the order of the options, so moving an
   * option is what orders the pipeline. */
  function move(button) {
    const list = document.getElementById(button.dataset.list);
    const step = Number(button.dataset.move);
    const options = Array.from(list.options).filter(function (o) { return o.selected; });
    if (step > 0) options.reverse();
    for (const option of options) {
      const neighbour = step < 0 ? option.previousElementSibling : option.nextElementSibling;
      if (!neighbour || neighbour.selected) continue;
      if (step < 0) list.insertBefore(option, neighbour);
      else list.insertBefore(neighbour, option);
    }
    list.focus();
  }

  /* -- trying the expression on a series -------------------------------------------- */

  function cell(tag, text) {
    const element = document.createElement(tag);
    element.textContent = text;
    return element;
  }

  function shownValue(value) {
    if (value === null || value === undefined) return "(missing)";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function showResult(out, answer) {
    out.replaceChildren();
    const outcome = cell("p", answer.result ? "Matches this series." : "Does not match this series.");
    outcome.className = "rule-test-outcome " + (answer.result ? "ok-text" : "error-text");
    out.appendChild(outcome);
    const names = Object.keys(answer.tags);
    if (names.length === 0) {
      out.appendChild(cell("p", "The expression reads no tags."));
      return;
    }
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    const table = document.createElement("table");
    const caption = cell("caption", "The tags the expression reads, as the router sees them");
    caption.className = "visually-hidden";
    table.appendChild(caption);
    const head = document.createElement("tr");
    head.append(cell("th", "Tag"), cell("th", "Value"));
    head.querySelectorAll("th").forEach(function (th) { th.scope = "col"; });
    table.appendChild(document.createElement("thead")).appendChild(head);
    const body = table.appendChild(document.createElement("tbody"));
    for (const name of names) {
      const row = document.createElement("tr");
      const key = cell("td", name);
      key.className = "mono";
      const value = cell("td", shownValue(answer.tags[name]));
      value.className = "wrap";
      row.append(key, value);
      body.appendChild(row);
    }
    wrap.appendChild(table);
    out.appendChild(wrap);
  }

  async function runTest(button) {
    const out = document.getElementById("rule-test-result");
    const series = document.getElementById("rule-test-series");
    const field = document.getElementById("rule-expression");
    button.disabled = true;
    out.replaceChildren(cell("p", "Testing…"));
    try {
      const answer = await api("POST", "/api/rules/test", {
        rule: field.value,
        series_id: Number(series.value),
        tag_values: document.getElementById("rule-tag-values")?.value || "typed",
      });
      showResult(out, answer);
    } catch (error) {
      const problem = cell("p", error.message);
      problem.className = "error-text";
      out.replaceChildren(problem);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const field = document.getElementById("rule-expression");
    if (field) setupCheck(field);
    document.querySelectorAll("button[data-move]").forEach(function (button) {
      button.addEventListener("click", function () { move(button); });
    });
    const test = document.getElementById("rule-test-run");
    if (test) test.addEventListener("click", function () { runTest(test); });
  });
})();
