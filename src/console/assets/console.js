// sluice console: the live parts. Plain JavaScript, no libraries; every
// value from the server is put in the page with textContent (never as HTML)
// unless it is a fragment the server rendered and escaped.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  function flash(text, bad) {
    const el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = bad ? "flash bad" : "flash";
    el.hidden = false;
  }

  // A message shown after the reload that follows an action.
  function flashAfterReload(text) {
    sessionStorage.setItem("sluice-flash", text);
    location.reload();
  }
  const carried = sessionStorage.getItem("sluice-flash");
  if (carried) {
    sessionStorage.removeItem("sluice-flash");
    flash(carried, false);
  }

  async function send(method, url, body) {
    const opts = {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
    };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const why = data && data.error ? data.error : resp.status + " " + resp.statusText;
      const err = new Error(data && data.field ? why + " (" + data.field + ")" : why);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  // ---- self-refreshing fragments ----
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    const every = Math.max(1000, parseInt(el.dataset.every || "5000", 10));
    setInterval(async function () {
      if (document.hidden) return;
      try {
        const resp = await fetch(el.dataset.refresh, { credentials: "same-origin" });
        // Signed out meanwhile (the answer is the sign-in page): go there.
        if (resp.redirected) { location.reload(); return; }
        if (!resp.ok) return;
        const html = await resp.text();
        const open = new Set();
        el.querySelectorAll("details[open][data-key]").forEach(function (d) { open.add(d.dataset.key); });
        el.innerHTML = html;
        el.querySelectorAll("details[data-key]").forEach(function (d) {
          if (open.has(d.dataset.key)) d.open = true;
        });
      } catch (e) { /* keep the last view */ }
    }, every);
  });

  // ---- dead letters ----
  function deadScope(node) {
    const card = node.closest("#dead") || document.getElementById("dead");
    return {
      stream: card.dataset.stream,
      reason: card.dataset.reason || "",
      where: card.dataset.where ? [card.dataset.where] : [],
    };
  }

  async function deadIds(op, stream, ids, then) {
    const r = await send("POST", "/api/v1/dead/" + op, { stream: stream, ids: ids });
    const verb = op === "replay" ? "Replayed" : "Purged";
    let text = verb + " " + r.done + " of " + ids.length + " dead letter(s)";
    if (r.skipped) text += "; " + r.skipped + " left in place";
    if (then) { sessionStorage.setItem("sluice-flash", text); location.href = then; }
    else flashAfterReload(text);
  }

  async function deadBulk(op, scope, status) {
    const filter = { stream: scope.stream, reason: scope.reason || null, where: scope.where };
    let total = 0, until = null, cursor = null;
    for (;;) {
      status.textContent = "Counting… " + total;
      const r = await send("POST", "/api/v1/dead/preview", Object.assign({}, filter, { until: until, cursor: cursor }));
      total += r.matched;
      until = r.until;
      cursor = r.cursor;
      if (r.complete) break;
    }
    status.textContent = "";
    if (!total || !until) { flash("Nothing to " + op + ".", false); return; }
    const what = scope.reason || scope.where.length ? " matching the filter" : "";
    const question = op === "replay"
      ? "Replay " + total + " dead letter(s)" + what + " to their source streams?"
      : "Delete " + total + " dead letter(s)" + what + " for good?";
    if (!confirm(question)) return;
    let done = 0, skipped = 0;
    cursor = null;
    for (;;) {
      status.textContent = (op === "replay" ? "Replaying… " : "Purging… ") + done + " / " + total;
      const r = await send("POST", "/api/v1/dead/" + op, Object.assign({}, filter, { until: until, cursor: cursor }));
      done += r.done;
      skipped += r.skipped;
      cursor = r.cursor;
      if (r.complete) break;
    }
    let text = (op === "replay" ? "Replayed " : "Purged ") + done + " dead letter(s)";
    if (skipped) text += "; " + skipped + " left in place";
    flashAfterReload(text);
  }

  // ---- schedules ----
  const addForm = document.getElementById("schedule-add");
  if (addForm) {
    addForm.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const f = new FormData(addForm);
      const body = { name: f.get("name"), stream: f.get("stream"), paused: f.get("paused") === "on", fields: {} };
      body[f.get("kind")] = f.get("value");
      (f.get("fields") || "").split("\n").forEach(function (line) {
        const i = line.indexOf("=");
        if (i > 0) body.fields[line.slice(0, i).trim()] = line.slice(i + 1);
      });
      try {
        await send("POST", "/api/v1/schedules", body);
        flashAfterReload("Added schedule " + body.name);
      } catch (e) { flash(e.message, true); }
    });
  }

  // ---- clicks ----
  document.addEventListener("click", async function (ev) {
    const el = ev.target.closest("[data-action]");
    if (!el) return;
    const action = el.dataset.action;
    try {
      if (action === "logout") {
        await send("POST", "/logout");
        location.href = "/login";
      } else if (action === "select-all") {
        document.querySelectorAll('input[name="sel"]').forEach(function (c) { c.checked = el.checked; });
      } else if (action === "dead-one") {
        const s = deadScope(el);
        if (el.dataset.op === "purge" && !confirm("Delete dead letter " + el.dataset.id + " for good?")) return;
        el.disabled = true;
        await deadIds(el.dataset.op, s.stream, [el.dataset.id], el.dataset.then);
      } else if (action === "dead-selected") {
        const s = deadScope(el);
        const ids = Array.from(document.querySelectorAll('input[name="sel"]:checked')).map(function (c) { return c.value; });
        if (!ids.length) { flash("Select dead letters first.", true); return; }
        const q = el.dataset.op === "replay"
          ? "Replay " + ids.length + " selected dead letter(s)?"
          : "Delete " + ids.length + " selected dead letter(s) for good?";
        if (!confirm(q)) return;
        await deadIds(el.dataset.op, s.stream, ids);
      } else if (action === "dead-bulk") {
        el.disabled = true;
        try { await deadBulk(el.dataset.op, deadScope(el), document.getElementById("bulk-status")); }
        finally { el.disabled = false; }
      } else if (action === "schedule") {
        const name = el.dataset.name, op = el.dataset.op;
        if (op === "remove" && !confirm("Remove schedule " + name + "? It will never fire again.")) return;
        el.disabled = true;
        const r = await send("POST", "/api/v1/schedules/" + encodeURIComponent(name) + "/" + op);
        flashAfterReload(op === "trigger" ? name + ": fired " + r.id : name + ": " + r.from + " → " + op + "d");
      } else if (action === "delayed-move") {
        const stream = document.getElementById("delayed").dataset.stream;
        el.disabled = true;
        const r = await send("POST", "/api/v1/delayed/move", { stream: stream, job_id: el.dataset.job });
        flashAfterReload("Moved to " + stream + " as " + r.id);
      }
    } catch (e) {
      el.disabled = false;
      flash(e.message, true);
    }
  });

  // ---- live tap ----
  const tap = document.getElementById("tap");
  if (tap) {
    const status = document.getElementById("tap-status");
    const rows = document.getElementById("tap-rows");
    let seen = 0;
    const source = new EventSource(tap.dataset.src);
    source.addEventListener("ready", function (ev) {
      const r = JSON.parse(ev.data);
      status.textContent = "Listening on " + r.stream + " for entries after " + r.from + ".";
      status.dataset.state = "listening";
    });
    source.addEventListener("entry", function (ev) {
      const e = JSON.parse(ev.data);
      const tr = document.createElement("tr");
      tr.className = "new";
      tr.dataset.id = e.id;
      const id = document.createElement("td");
      id.className = "mono nowrap";
      id.textContent = e.id;
      const at = document.createElement("td");
      at.className = "nowrap";
      at.textContent = e.time_ms ? new Date(e.time_ms).toISOString().replace("T", " ").slice(0, 19) : "";
      const cell = document.createElement("td");
      const list = document.createElement("div");
      list.className = "fields";
      e.fields.forEach(function (kv) {
        const f = document.createElement("span");
        f.className = "field";
        const k = document.createElement("span");
        k.className = "k";
        k.textContent = kv[0];
        const v = document.createElement("span");
        v.className = "v";
        v.textContent = kv[1];
        f.appendChild(k);
        f.appendChild(v);
        list.appendChild(f);
      });
      cell.appendChild(list);
      tr.appendChild(id);
      tr.appendChild(at);
      tr.appendChild(cell);
      rows.insertBefore(tr, rows.firstChild);
      while (rows.children.length > 500) rows.removeChild(rows.lastChild);
      seen += 1;
    });
    source.addEventListener("failure", function (ev) {
      status.textContent = "The tap stopped: " + JSON.parse(ev.data).error;
      status.dataset.state = "failed";
    });
    source.onerror = function () {
      if (status.dataset.state !== "failed") {
        status.textContent = "Disconnected; reconnecting…";
        status.dataset.state = "reconnecting";
      }
    };
  }
})();
