/* caduceus web interface: the few behaviours every page shares.
 *
 * Pages are rendered on the server; this script only sends changes to the JSON API (with
 * the session's CSRF token), shows the answer, and refreshes the live parts of a page.
 * Markup asks for a behaviour with data- attributes:
 *   <button data-action="POST /api/tasks/ID/restart" data-confirm="..." data-then="reload">
 *   <form data-api="PUT /api/targets/NAME" data-then="go:/targets">  (fields become JSON)
 *   <div data-refresh="5" data-src="/queue/fragment?state=failed">   (replaced every 5 s)
 * Page scripts use window.caduceus.api(method, path, body) for anything more.
 */
"use strict";

(function () {
  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  /* The API's error as a sentence: FastAPI answers {"detail": "..."} or a list of
   * validation errors, each with a location and a message. */
  function describe(detail, status) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map(function (item) {
          const where = (item.loc || []).filter(function (p) { return p !== "body"; }).join(".");
          return (where ? where + ": " : "") + item.msg;
        })
        .join("; ");
    }
    return "the server answered " + status;
  }

  async function api(method, path, body) {
    const options = {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
    };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const type = response.headers.get("content-type") || "";
    const answer = type.includes("json") ? await response.json() : await response.text();
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    }
    if (!response.ok) {
      const error = new Error(describe(answer && answer.detail, response.status));
      error.status = response.status;
      error.answer = answer;
      throw error;
    }
    return answer;
  }

  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.className = "flash " + (kind || "ok");
    box.hidden = false;
    if (kind !== "error") {
      clearTimeout(box._timer);
      box._timer = setTimeout(function () { box.hidden = true; }, 6000);
    }
  }

  function formError(form, message) {
    const slot = form.querySelector(".form-error");
    if (slot) {
      slot.textContent = message;
      slot.hidden = !message;
    } else if (message) {
      flash(message, "error");
    }
  }

  function setPath(target, dotted, value) {
    const parts = dotted.split(".");
    let here = target;
    for (let i = 0; i < parts.length - 1; i++) {
      if (typeof here[parts[i]] !== "object" || here[parts[i]] === null) here[parts[i]] = {};
      here = here[parts[i]];
    }
    here[parts[parts.length - 1]] = value;
  }

  /* A form's fields as a JSON document: checkboxes are booleans, number fields numbers
   * (left out when empty), data-json fields parsed, data-list fields split into lists,
   * and a name with dots ("notification.on_error") makes nested objects. */
  function formData(form) {
    const out = {};
    for (const field of form.elements) {
      if (!field.name || field.disabled || field.dataset.skip !== undefined) continue;
      let value;
      if (field.type === "checkbox") {
        value = field.checked;
      } else if (field.type === "radio") {
        if (!field.checked) continue;
        value = field.value;
      } else if (field.type === "number") {
        if (field.value === "") continue;
        value = Number(field.value);
      } else if (field.tagName === "SELECT" && field.multiple) {
        value = Array.from(field.selectedOptions).map(function (o) { return o.value; });
      } else if (field.dataset.json !== undefined) {
        try {
          value = field.value.trim() === "" ? {} : JSON.parse(field.value);
        } catch (e) {
          throw new Error(field.name + ": not valid JSON (" + e.message + ")");
        }
      } else if (field.dataset.list !== undefined) {
        value = field.value.split(/[\n,]/).map(function (s) { return s.trim(); }).filter(Boolean);
      } else {
        if (field.dataset.omitEmpty !== undefined && field.value === "") continue;
        value = field.value;
      }
      setPath(out, field.name, value);
    }
    return out;
  }

  function after(then, answer) {
    if (!then || then === "reload") {
      window.location.reload();
    } else if (then.startsWith("go:")) {
      window.location.assign(then.slice(3));
    } else if (then === "flash") {
      flash(answer && answer.message ? answer.message : "Done.");
    }
  }

  function splitAction(spec) {
    const space = spec.indexOf(" ");
    return [spec.slice(0, space), spec.slice(space + 1)];
  }

  document.addEventListener("click", async function (event) {
    const logout = event.target.closest("[data-logout]");
    if (logout) {
      try { await api("POST", "/api/logout"); } catch (e) { /* gone already */ }
      window.location.assign("/login");
      return;
    }
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const [method, path] = splitAction(button.dataset.action);
    const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    button.disabled = true;
    try {
      const answer = await api(method, path, body);
      if (button.dataset.then === "flash" || !button.dataset.then) {
        flash(button.dataset.done || "Done.");
        if (!button.dataset.then) setTimeout(function () { window.location.reload(); }, 600);
      } else {
        after(button.dataset.then, answer);
      }
    } catch (error) {
      flash(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (form.dataset.login !== undefined) {
      event.preventDefault();
      return login(form);
    }
    if (form.dataset.passwordChange !== undefined) {
      event.preventDefault();
      return changePassword(form);
    }
    if (!form.dataset.api) return;
    event.preventDefault();
    formError(form, "");
    const [method, path] = splitAction(form.dataset.api);
    const submit = form.querySelector('[type="submit"]');
    if (submit) submit.disabled = true;
    try {
      const body = form.dataset.raw !== undefined ? new FormData(form) : formData(form);
      const answer = await api(method, path, body);
      if (form.dataset.then === "flash") flash(form.dataset.done || "Saved.");
      else after(form.dataset.then, answer);
    } catch (error) {
      formError(form, error.message);
    } finally {
      if (submit) submit.disabled = false;
    }
  });

  function safeNext() {
    const next = new URLSearchParams(location.search).get("next") || "/";
    // Only a path on this site. The browser's own parser decides: it drops tabs and newlines
    // and reads "\" as "/", so "/<tab>/elsewhere" is "//elsewhere", which a test of the text
    // would let through.
    let url;
    try {
      url = new URL(next, location.origin);
    } catch (e) {
      return "/";
    }
    return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
  }

  async function login(form) {
    formError(form, "");
    try {
      const answer = await api("POST", "/api/login", {
        username: form.elements.username.value,
        password: form.elements.password.value,
      });
      window.location.assign(answer.must_change_password ? "/account/password" : safeNext());
    } catch (error) {
      formError(form, error.message);
    }
  }

  async function changePassword(form) {
    formError(form, "");
    const fresh = form.elements.new_password.value;
    if (fresh !== form.elements.repeat_password.value) {
      formError(form, "The two new passwords differ.");
      return;
    }
    try {
      await api("POST", "/api/me/password", {
        current_password: form.elements.current_password.value,
        new_password: fresh,
        revoke_tokens: form.elements.revoke_tokens.checked,
      });
      window.location.assign("/login?changed=1");
    } catch (error) {
      formError(form, error.message);
    }
  }

  /* Live parts of a page: fetched again every data-refresh seconds while the tab is
   * visible. The server renders (and escapes) the fragment. */
  function refresh(box) {
    const seconds = Number(box.dataset.refresh) || 5;
    setInterval(async function () {
      if (document.hidden || box.dataset.paused !== undefined) return;
      try {
        const response = await fetch(box.dataset.src, { credentials: "same-origin" });
        if (response.status === 401 || response.redirected) {
          window.location.reload();
          return;
        }
        if (response.ok) {
          box.innerHTML = await response.text();
          box.dispatchEvent(new CustomEvent("caduceus:refreshed", { bubbles: true }));
        }
      } catch (e) { /* the next round will tell */ }
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][data-src]").forEach(refresh);
    const query = new URLSearchParams(location.search);
    document.querySelectorAll("[data-show-if-query]").forEach(function (el) {
      if (query.has(el.dataset.showIfQuery)) el.hidden = false;
    });
  });

  window.caduceus = { api: api, flash: flash, formData: formData, formError: formError };
})();
