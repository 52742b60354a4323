// Upload page: a bar per file, one for the batch, a few files in flight, then Finalize.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const PARALLEL = 3;
  const list = document.getElementById("files");
  const batchBar = document.getElementById("batch-bar");
  const batchText = document.getElementById("batch-text");
  const finalizeButton = document.getElementById("finalize");
  const result = document.getElementById("result");
  const items = [];
  let sessionId = null;
  let active = 0;
  let started = null;

  function api(method, path, body) {
    return fetch(path, {
      method, credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(async (r) => {
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(data.error || r.statusText);
      return data;
    });
  }

  // One session for the whole batch, even when several files ask for it at once.
  let sessionRequest = null;
  function session() {
    sessionRequest = sessionRequest || api("POST", "/api/v1/sessions").then((data) => (sessionId = data.id));
    return sessionRequest;
  }

  function human(bytes) {
    return bytes > 1e6 ? (bytes / 1e6).toFixed(1) + " MB" : (bytes / 1e3).toFixed(0) + " kB";
  }

  function add(files) {
    for (const file of files) {
      if (!/\.(fit|fits|fts)$/i.test(file.name)) continue;
      const row = document.createElement("li");
      row.innerHTML = '<span class="name"></span><div class="bar"><div class="fill"></div></div><span class="state">waiting</span>';
      row.querySelector(".name").textContent = file.name;
      list.appendChild(row);
      items.push({file, row, loaded: 0, state: "waiting"});
    }
    update();
    pump();
  }

  function update() {
    const total = items.reduce((s, i) => s + i.file.size, 0);
    const loaded = items.reduce((s, i) => s + i.loaded, 0);
    const done = items.filter((i) => i.state === "done" || i.state === "failed").length;
    const ok = items.filter((i) => i.state === "done").length;
    const failed = items.filter((i) => i.state === "failed").length;
    batchBar.style.width = (total ? (100 * loaded / total) : 0).toFixed(1) + "%";
    let text = items.length ? `${done} of ${items.length} files · ${human(loaded)} of ${human(total)}` : "No files yet";
    if (started && loaded && done < items.length) {
      const rate = loaded / ((Date.now() - started) / 1000);
      text += ` · ${human(rate)}/s · ${Math.ceil((total - loaded) / rate)} s left`;
    }
    if (failed) text += ` · ${failed} failed`;
    batchText.textContent = text;
    finalizeButton.disabled = !(items.length && done === items.length && ok > 0);
  }

  function pump() {
    while (active < PARALLEL) {
      const next = items.find((i) => i.state === "waiting");
      if (!next) return;
      next.state = "uploading";
      active += 1;
      send(next).finally(() => { active -= 1; update(); pump(); });
    }
  }

  async function send(item, attempt = 1) {
    started = started || Date.now();
    const id = await session();
    const fill = item.row.querySelector(".fill");
    const state = item.row.querySelector(".state");
    state.textContent = "uploading";
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", `/api/v1/sessions/${id}/frames/${encodeURIComponent(item.file.name)}`);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Content-Type", "application/fits");
      xhr.upload.onprogress = (e) => {
        item.loaded = e.loaded;
        fill.style.width = (100 * e.loaded / item.file.size).toFixed(1) + "%";
        update();
      };
      xhr.onload = () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === 200 || xhr.status === 201) {
          item.loaded = item.file.size; item.state = "done";
          fill.style.width = "100%";
          state.textContent = xhr.status === 200 ? "already uploaded" : `${data.object} · ${data.chunk_key}`;
          item.row.classList.add("done");
          resolve();
        } else if (xhr.status >= 500 && attempt < 3) {
          setTimeout(() => send(item, attempt + 1).then(resolve), 1000 * attempt);
        } else {
          item.loaded = item.file.size; item.state = "failed";
          state.textContent = data.error || `failed (${xhr.status})`;
          item.row.classList.add("failed");
          resolve();
        }
      };
      xhr.onerror = () => {
        if (attempt < 3) { setTimeout(() => send(item, attempt + 1).then(resolve), 1000 * attempt); return; }
        item.loaded = item.file.size; item.state = "failed";
        state.textContent = "network error"; item.row.classList.add("failed");
        resolve();
      };
      xhr.send(item.file);
    });
  }

  finalizeButton.addEventListener("click", async () => {
    finalizeButton.disabled = true;
    try {
      const data = await api("POST", `/api/v1/sessions/${sessionId}/finalize`);
      result.hidden = false;
      result.textContent = `Queued ${data.jobs.length} stacking job(s). `;
      const link = document.createElement("a");
      link.href = "/status"; link.textContent = "Follow them on the status page.";
      result.appendChild(link);
    } catch (e) {
      result.hidden = false; result.textContent = "Finalize failed: " + e.message;
      finalizeButton.disabled = false;
    }
  });

  const zone = document.getElementById("dropzone");
  document.getElementById("picker").addEventListener("change", (e) => add(e.target.files));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault(); zone.classList.remove("over");
    add(await droppedFiles(e.dataTransfer));
  });

  // Folders dropped from a file manager arrive as directory entries: walk them.
  async function droppedFiles(transfer) {
    const entries = [...transfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!entries.length) return [...transfer.files];
    const files = [];
    async function walk(entry) {
      if (entry.isFile) { files.push(await new Promise((res, rej) => entry.file(res, rej))); return; }
      const reader = entry.createReader();
      let batch;
      do {
        batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        for (const child of batch) await walk(child);
      } while (batch.length);
    }
    for (const entry of entries) await walk(entry);
    return files;
  }
})();
