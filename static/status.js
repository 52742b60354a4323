// Status page: refresh job states and progress while anything is pending or running.
"use strict";
(function () {
  async function refresh() {
    const r = await fetch("/api/v1/status", {credentials: "same-origin"});
    if (!r.ok) return;
    const data = await r.json();
    let busy = false;
    let changed = false;
    for (const session of data.sessions) {
      for (const chunk of session.chunks) {
        const job = chunk.job;
        if (!job) continue;
        const cell = document.querySelector(`[data-job="${job.id}"]`);
        if (!cell) continue;
        if (!cell.classList.contains(job.status)) changed = true;
        const fill = document.querySelector(`[data-progress="${job.id}"]`);
        const message = document.querySelector(`[data-message="${job.id}"]`);
        if (fill) fill.value = job.progress;
        if (message) message.textContent = job.message || "";
        busy = busy || job.status === "pending" || job.status === "running";
      }
    }
    if (changed) { window.location.reload(); return; }
    if (busy) setTimeout(refresh, 2000);
  }
  setTimeout(refresh, 2000);
})();
