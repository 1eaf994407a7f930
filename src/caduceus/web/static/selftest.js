/* The Self-test page: start a run and follow its stages until it ends.
 *
 * Every text from the server (messages may quote configuration names or errors) goes in
 * with textContent; nothing is parsed as HTML.
 */
"use strict";

(function () {
  const POLL_MS = 1000;

  function badge(state) {
    const span = document.createElement("span");
    span.className = "badge state-" + state;
    span.textContent = state;
    return span;
  }

  // A time from the API (UTC) as the pages show it: in the zone the server is configured to
  // show (the body's data-time-zone), with the UTC time on hover.
  function when(iso) {
    const moment = new Date(iso);
    if (!iso || isNaN(moment.getTime())) return document.createTextNode(iso || "");
    const parts = {};
    new Intl.DateTimeFormat("en-GB", {
      timeZone: document.body.dataset.timeZone || "UTC",
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    }).formatToParts(moment).forEach(function (part) { parts[part.type] = part.value; });
    const shown = document.createElement("time");
    shown.dateTime = moment.toISOString();
    shown.title = moment.toISOString().slice(0, 19).replace("T", " ") + " UTC";
    shown.textContent = parts.year + "-" + parts.month + "-" + parts.day + " " +
      parts.hour + ":" + parts.minute + ":" + parts.second;
    return shown;
  }

  function showSummary(run) {
    const summary = document.getElementById("selftest-summary");
    summary.replaceChildren(badge(run.state));
    summary.append(" started ", when(run.started_at), " by " + run.started_by);
    if (run.finished_at) summary.append(", finished ", when(run.finished_at));
    const heading = document.getElementById("selftest-result");
    heading.textContent = run.state === "running" ? "Running" : "Last run";
  }

  function showStages(run) {
    const list = document.getElementById("selftest-stages");
    const items = run.stages.map(function (stage) {
      const item = document.createElement("li");
      item.className = "selftest-stage stage-" + stage.state;
      const title = document.createElement("span");
      title.className = "selftest-title";
      title.textContent = stage.title;
      const seconds = document.createElement("span");
      seconds.className = "selftest-seconds muted";
      seconds.textContent = stage.seconds === null ? "" : stage.seconds.toFixed(1) + " s";
      item.append(badge(stage.state), " ", title, " ", seconds);
      if (stage.message) {
        const message = document.createElement("div");
        message.className = "selftest-message";
        message.textContent = stage.message;
        item.append(message);
      }
      return item;
    });
    list.replaceChildren.apply(list, items);
    document.getElementById("selftest-cleanup").textContent =
      run.cleanup ? "Clean-up: " + run.cleanup : "";
  }

  function show(run) {
    showSummary(run);
    showStages(run);
    const box = document.getElementById("selftest-run");
    box.dataset.runId = run.id;
    box.dataset.state = run.state;
  }

  async function follow(id) {
    const button = document.getElementById("selftest-start");
    const status = document.getElementById("selftest-status");
    button.disabled = true;
    status.textContent = "The self-test is running…";
    for (;;) {
      let run;
      try {
        run = await window.caduceus.api("GET", "/api/selftest/" + encodeURIComponent(id));
      } catch (error) {
        status.textContent = "Cannot read the run: " + error.message;
        await new Promise(function (done) { setTimeout(done, POLL_MS * 3); });
        continue;
      }
      show(run);
      if (run.state !== "running") {
        status.textContent = run.state === "passed"
          ? "Every stage passed."
          : "The self-test failed; the failed stage says why.";
        button.disabled = false;
        return;
      }
      await new Promise(function (done) { setTimeout(done, POLL_MS); });
    }
  }

  async function start() {
    const button = document.getElementById("selftest-start");
    button.disabled = true;
    try {
      const answer = await window.caduceus.api("POST", "/api/selftest", {});
      await follow(answer.id);
    } catch (error) {
      window.caduceus.flash(error.message, "error");
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const button = document.getElementById("selftest-start");
    if (!button) return;
    button.addEventListener("click", start);
    const box = document.getElementById("selftest-run");
    if (box.dataset.state === "running" && box.dataset.runId) follow(box.dataset.runId);
  });
})();
