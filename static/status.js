// Status page: job states and progress, live. Polls /api/v1/status every second while a job is
// pending or running (every 15 s otherwise, and not at all while the tab is hidden); bars glide
// between polls (a CSS transition), and a job that ends gets its buttons without a reload.
"use strict";
(function () {
  const root = document.getElementById("status-root");
  if (!root) return;
  const csrf = root.dataset.csrf;
  const FAST = 1000, SLOW = 15000;   // the stacker writes progress within a second of a change
  let timer = null;

  function setBar(bar, value) {
    const fill = bar.querySelector(".fill");
    const pct = Math.max(0, Math.min(1, Number(value) || 0)) * 100;
    fill.style.width = pct.toFixed(1) + "%";
    bar.setAttribute("aria-valuenow", Math.round(pct));
  }

  for (const bar of document.querySelectorAll("[data-progress-bar]")) {
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    setBar(bar, bar.dataset.value);
  }

  function form(action, label, cls, confirmText) {
    const f = document.createElement("form");
    f.method = "post"; f.action = action; f.className = "inline";
    if (confirmText) f.dataset.confirm = confirmText;
    const token = document.createElement("input");
    token.type = "hidden"; token.name = "csrf_token"; token.value = csrf;
    const button = document.createElement("button");
    button.type = "submit"; button.className = cls; button.textContent = label;
    f.append(token, button);
    return f;
  }

  function actions(job) {
    const out = [];
    if (job.stack_id) {
      const a = document.createElement("a");
      a.className = "button small"; a.href = "/stacks/" + job.stack_id; a.textContent = "View stack";
      out.push(a);
    }
    if (job.status === "failed") out.push(form("/jobs/" + job.id + "/retry", "Retry", "small"));
    if (job.status !== "running") {
      out.push(form("/jobs/" + job.id + "/delete", "Delete", "small danger",
                    "Delete this job, its raw frames and its stack? This cannot be undone."));
    }
    return out;
  }

  function apply(job) {
    const cell = document.querySelector('[data-job="' + job.id + '"]');
    if (!cell) return false;
    cell.className = "state " + job.status;
    cell.querySelector(".state-text").textContent = job.status === "running"
      ? "running · " + Math.round(100 * job.progress) + " %" : job.status;
    const error = cell.querySelector(".job-error");
    error.textContent = job.error || "";
    error.hidden = !job.error;
    const bar = document.querySelector('[data-progress-bar="' + job.id + '"]');
    if (bar) setBar(bar, job.status === "done" ? 1 : job.progress);
    const message = document.querySelector('[data-message="' + job.id + '"]');
    if (message) message.textContent = job.status === "done" ? "" : (job.message || "");
    const box = document.querySelector('[data-actions="' + job.id + '"]');
    if (box && (box.dataset.status !== job.status || (job.stack_id && !box.querySelector("a")))) {
      box.dataset.status = job.status;
      box.replaceChildren(...actions(job));
    }
    return true;
  }

  // Pending jobs and no stacker seen lately: say why nothing moves.
  function showStackerWarning(stackers, sessions) {
    const warning = document.getElementById("stacker-warning");
    if (!warning || !stackers) return;
    const pending = sessions.some(s => s.chunks.some(c => c.job && c.job.status === "pending"));
    warning.querySelector(".stacker-seen").textContent = stackers.text;
    warning.hidden = !(pending && stackers.silent);
  }

  async function refresh() {
    timer = null;
    if (document.hidden) return;               // resumed by visibilitychange
    let busy = false;
    try {
      const r = await fetch("/api/v1/status", {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (!r.ok) { schedule(SLOW); return; }
      const data = await r.json();
      let unknown = false;
      for (const session of data.sessions) {
        if (session.status === "dismissed") continue;     // hidden on purpose (lib/batches.py)
        const section = document.querySelector('[data-session="' + session.id + '"]');
        if (!section) { unknown = true; continue; }
        const tag = section.querySelector("h2 .tag");
        if (tag && tag.textContent !== session.status) { unknown = true; }
        for (const chunk of session.chunks) {
          const job = chunk.job;
          if (!job) continue;
          busy = busy || job.status === "pending" || job.status === "running";
          if (!apply(job)) unknown = true;
        }
      }
      showStackerWarning(data.stackers, data.sessions);
      // A batch finalized or uploaded elsewhere: draw the page anew, unless a form is being used.
      if (unknown && !root.contains(document.activeElement)) { window.location.reload(); return; }
    } catch (e) {
      /* offline for a moment: try again later */
    }
    schedule(busy ? FAST : SLOW);
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(100); });
  schedule(document.querySelector(".state.pending, .state.running") ? 300 : FAST);
})();
