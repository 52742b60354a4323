// Upload page: hundreds or thousands of raw frames, a few in flight at a time, a bar per file and
// one for the batch, files already in skipped by their SHA-256, an unfinished batch resumed after a
// reload, and Finalize once every file is in.
"use strict";
(function () {
  const root = document.getElementById("uploader");
  if (!root) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const PARALLEL = 3;              // files in flight at once
  const MAX_ATTEMPTS = 3;          // tries per file for errors that may pass (network, 5xx, 429)
  const STORE = "crowdsky.upload.session." + root.dataset.user;
  const FITS_NAME = /\.(fit|fits|fts)$/i;

  const $ = (id) => document.getElementById(id);
  const list = $("files"), batchBar = $("batch-bar"), batchText = $("batch-text"), batchSpeed = $("batch-speed");
  const finalizeButton = $("finalize"), result = $("result"), zone = $("dropzone");
  const filesHead = $("files-head"), filesCount = $("files-count"), retryButton = $("retry-failed");

  const items = [];                // {file, key, row, fill, label, state, loaded, attempts, sha, frame}
  const listed = new Set();        // files already in the list (path, size, time), to ignore a second drop
  const known = new Map();         // sha256 → frame the server has for this owner (from this page or the session)
  const inSession = new Set();     // sha256 of the frames in the open session
  let sessionId = null;
  let sessionPromise = null;
  let running = 0;
  let finalized = false;
  let ignored = 0;
  let sent = 0;                    // bytes actually sent over the wire on this page
  const samples = [];              // [ms, sent] over the last seconds, for bytes/s
  let wakeLock = null;
  let ticker = null;

  // --- numbers in words ---------------------------------------------------------------------

  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
    if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
    return n + " B";
  }

  function duration(s) {
    s = Math.max(1, Math.round(s));
    if (s >= 3600) return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return s + " s";
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // What the server said, in words a telescope owner understands. The server's own message stays
  // available under "details".
  const REASONS = [
    [/BAYERPAT is missing/i, "this is not a raw colour frame from a Seestar (no Bayer pattern)"],
    [/BAYERPAT = .* is not one of/i, "unknown Bayer pattern: this does not look like a raw Seestar frame"],
    [/expected a 2-D raw Bayer frame|NAXIS = 3/i, "this is a stacked or colour image, not a raw sub-frame: use the files from the _sub folder"],
    [/BITPIX/i, "this is not a raw 16-bit sub-frame (perhaps an edited or exported image)"],
    [/DATE-OBS is missing/i, "the file does not say when it was taken (no DATE-OBS), so it cannot be sorted into a night"],
    [/DATE-OBS = /i, "the time the frame was taken cannot be read (DATE-OBS)"],
    [/\b(RA|DEC) is missing|\b(RA|DEC) = .* (outside|is not a number)/i, "the file does not say where the telescope pointed (no RA/Dec)"],
    [/EXPTIME/i, "the exposure time is missing or implausible"],
    [/not a FITS file|SIMPLE|cannot be read/i, "this is not a FITS file the telescope wrote"],
    [/truncated|ends inside|no END card|shorter than|ended early/i, "the file is incomplete: it was cut off, perhaps while copying it from the telescope"],
    [/not a FITS file name/i, "only .fit and .fits files can be uploaded"],
    [/plausible frame size/i, "the image size is not that of a Seestar frame"],
    [/quota/i, "your storage space is full: finalize or delete earlier uploads, then try again"],
    [/limit per frame|too large/i, "the file is larger than a raw frame can be"],
    [/the file is empty/i, "the file is empty"],
  ];

  function explain(status, error) {
    const message = String(error || "").replace(/^[^:]{1,255}\.(fit|fits|fts): /i, "");
    for (const [pattern, words] of REASONS) if (pattern.test(message)) return [words, message];
    if (status === 0) return ["the connection dropped several times; check your network and retry", message];
    if (status === 401) return ["you were logged out: log in again, then drop the files again", message];
    if (status === 403) return ["this page has expired: reload it and drop the files again", message];
    if (status === 409) return ["this batch was already finalized: drop the files again to start a new one", message];
    if (status === 429) return ["the server is busy: wait a minute and retry", message];
    if (status === 503) return ["storage is unavailable right now (nothing was lost): retry in a few minutes", message];
    if (status >= 500) return ["the server had a problem storing this file: retry later", message];
    return [message || "refused (" + status + ")", message];
  }

  // --- talking to the server ------------------------------------------------------------------

  async function api(method, path) {
    const r = await fetch(path, {method, credentials: "same-origin",
                                 headers: {"X-CSRF-Token": csrf, "Accept": "application/json"}});
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { const e = new Error(data.error || r.statusText); e.status = r.status; throw e; }
    return data;
  }

  function remember(frame) {
    known.set(frame.sha256, frame);
    if (frame.session_id === sessionId) inSession.add(frame.sha256);
  }

  function ensureSession() {
    if (sessionId !== null) return Promise.resolve(sessionId);
    if (!sessionPromise) {
      sessionPromise = api("POST", "/api/v1/sessions").then((data) => {
        sessionId = data.id;
        inSession.clear();
        try { localStorage.setItem(STORE, String(sessionId)); } catch (e) { /* private mode */ }
        return sessionId;
      }).finally(() => { sessionPromise = null; });
    }
    return sessionPromise;
  }

  function forgetSession() {
    sessionId = null;
    inSession.clear();
    try { localStorage.removeItem(STORE); } catch (e) { /* private mode */ }
  }

  async function sha256(file) {
    if (!window.crypto || !crypto.subtle) return null;      // not a secure context: the server dedups
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function put(item, id) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      let reported = 0;
      xhr.open("PUT", "/api/v1/sessions/" + id + "/frames/" + encodeURIComponent(item.file.name));
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Content-Type", "application/fits");
      xhr.upload.onprogress = (e) => {
        sent += e.loaded - reported;
        reported = e.loaded;
        item.loaded = Math.min(e.loaded, item.file.size);
        item.fill.style.width = (100 * item.loaded / item.file.size).toFixed(1) + "%";
        schedule();
      };
      xhr.onload = () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        resolve({status: xhr.status, data});
      };
      xhr.onerror = () => resolve({status: 0, data: {}});
      xhr.ontimeout = () => resolve({status: 0, data: {}});
      xhr.send(item.file);
    });
  }

  // --- the list -------------------------------------------------------------------------------

  function setState(item, state, text, detail) {
    item.state = state;
    item.row.className = "file " + state;
    item.label.textContent = text;
    if (detail) item.label.title = detail; else item.label.removeAttribute("title");
    let line = item.row.querySelector(".detail");
    if (detail && !line) {
      line = document.createElement("span");
      line.className = "detail";
      item.row.appendChild(line);
    }
    if (line) { line.textContent = detail || ""; line.hidden = !detail; }
    schedule();
  }

  function add(files) {
    if (finalized) startNewBatch();
    const fragment = document.createDocumentFragment();
    let added = 0, repeated = 0;
    for (const file of files) {
      if (!FITS_NAME.test(file.name)) { ignored += 1; continue; }
      const key = (file.webkitRelativePath || file.name) + "|" + file.size + "|" + file.lastModified;
      if (listed.has(key)) { repeated += 1; continue; }
      listed.add(key);
      const row = document.createElement("li");
      row.className = "file waiting";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      name.title = file.webkitRelativePath || file.name;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      bar.appendChild(fill);
      const label = document.createElement("span");
      label.className = "state";
      label.textContent = "waiting";
      row.append(name, bar, label);
      fragment.appendChild(row);
      items.push({file, key, row, fill, label, state: "waiting", loaded: 0, attempts: 0, sha: null, frame: null});
      added += 1;
    }
    list.appendChild(fragment);
    if (repeated) note(plural(repeated, "file") + " already in the list were left out.");
    schedule();
    pump();
    return added;
  }

  function pump() {
    while (running < PARALLEL) {
      const next = items.find((i) => i.state === "waiting");
      if (!next) break;
      running += 1;
      next.state = "hashing";
      follow(next.row);
      process(next).catch((e) => fail(next, e.status || 0, e.message))
        .finally(() => { running -= 1; schedule(); pump(); });
    }
    holdWakeLock();
  }

  async function process(item) {
    setState(item, "hashing", "checking…");
    try { item.sha = await sha256(item.file); } catch (e) { item.sha = null; }
    if (item.sha && !known.has(item.sha)) {
      // Sent in an earlier batch? Then the server has these bytes: don't send them again.
      const r = await fetch("/api/v1/frames?sha256=" + item.sha, {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (r.ok) (await r.json()).frames.forEach(remember);
    }
    if (item.sha && known.has(item.sha)) { skip(item, known.get(item.sha)); return; }
    let renewed = false;
    for (;;) {
      const id = await ensureSession();
      item.attempts += 1;
      item.loaded = 0;
      setState(item, "uploading", item.attempts > 1 ? "retrying (" + item.attempts + " of " + MAX_ATTEMPTS + ")" : "uploading");
      const r = await put(item, id);
      if (r.status === 201) { done(item, r.data); return; }
      if (r.status === 200) { skip(item, r.data); return; }
      if (r.status === 409 && !renewed && /upload session/i.test(r.data.error || "")) {
        // The batch was finalized or expired meanwhile (another tab, the janitor): start a new one.
        renewed = true; item.attempts -= 1;
        if (sessionId === id) forgetSession();
        continue;
      }
      const passing = retryable(r.status);
      if (passing && item.attempts < MAX_ATTEMPTS) {
        setState(item, "retrying", "retrying in " + (2 * item.attempts) + " s…");
        await new Promise((res) => setTimeout(res, 2000 * item.attempts));
        continue;
      }
      fail(item, r.status, r.data.error);
      return;
    }
  }

  function done(item, frame) {
    remember(frame);
    item.frame = frame;
    item.loaded = item.file.size;
    item.fill.style.width = "100%";
    const taken = frame.date_obs ? String(frame.date_obs).slice(0, 16).replace("T", " ") + " UTC" : "in";
    setState(item, "done", (frame.object || "frame") + " · " + taken);
  }

  function skip(item, frame) {
    remember(frame);
    item.frame = frame;
    item.loaded = item.file.size;
    item.fill.style.width = "100%";
    const earlier = frame.session_id !== sessionId;
    setState(item, "skipped", earlier ? "already uploaded in an earlier batch" : "already in · skipped");
  }

  // A refusal (4xx: not a frame, too big, ...) fails the same way every time; a lost connection, a
  // timeout, too many requests or a server fault (5xx) may pass later: only those are offered a retry.
  function retryable(status) { return status === 0 || status === 408 || status === 429 || status >= 500; }

  function fail(item, status, error) {
    const [words, detail] = explain(status, error);
    item.retryable = retryable(status);
    item.loaded = 0;
    item.fill.style.width = "100%";
    setState(item, "failed", words, detail && detail !== words ? "server says: " + detail : "");
  }

  // Keep the rows being sent in view in a long list, unless the owner is scrolling it themselves.
  let touchedAt = 0;
  for (const type of ["wheel", "touchmove", "keydown", "mousedown"]) {
    list.addEventListener(type, () => { touchedAt = performance.now(); }, {passive: true});
  }
  function follow(row) {
    if (performance.now() - touchedAt < 4000 || list.scrollHeight <= list.clientHeight) return;
    const top = row.offsetTop;                  // the list is positioned: offsets are its own
    if (top < list.scrollTop || top > list.scrollTop + list.clientHeight - row.offsetHeight) {
      list.scrollTop = Math.max(0, top - row.offsetHeight);
    }
  }

  function note(text) {
    result.hidden = false;
    result.className = "notice";
    result.textContent = text;
  }

  // --- the batch bar, throttled to one redraw a frame -------------------------------------------

  let queued = false;
  function schedule() {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; redraw(); });
  }

  function count(state) { return items.filter((i) => i.state === state).length; }

  function busy() { return items.some((i) => i.state === "waiting" || i.state === "hashing" || i.state === "uploading" || i.state === "retrying"); }

  function redraw() {
    const total = items.reduce((s, i) => s + i.file.size, 0);
    const finished = items.filter((i) => i.state === "done" || i.state === "skipped");
    const failed = count("failed");
    const doneBytes = items.reduce((s, i) => s + (i.state === "failed" ? i.file.size : i.loaded), 0);
    const settled = finished.length + failed;
    const fraction = total ? doneBytes / total : (inSession.size ? 1 : 0);
    batchBar.style.width = (100 * fraction).toFixed(1) + "%";
    $("batch-progress").setAttribute("aria-valuenow", Math.round(100 * fraction));

    let text;
    if (items.length) {
      text = settled + " of " + plural(items.length, "file") + " · " + bytes(doneBytes) + " of " + bytes(total);
      const skipped = count("skipped");
      if (skipped) text += " · " + skipped + " already in";
      if (failed) text += " · " + failed + " failed";
    } else if (inSession.size) {
      text = plural(inSession.size, "file") + " in this batch so far";
    } else {
      text = "No files yet";
    }
    batchText.textContent = text;

    const now = performance.now();
    samples.push([now, sent]);
    while (samples.length > 2 && now - samples[0][0] > 8000) samples.shift();
    if (busy()) {
      const [t0, b0] = samples[0];
      const rate = now - t0 > 500 ? (sent - b0) / ((now - t0) / 1000) : 0;
      const left = items.reduce((s, i) => s + (["waiting", "hashing", "uploading", "retrying"].includes(i.state) ? i.file.size - i.loaded : 0), 0);
      batchSpeed.textContent = rate > 0 ? bytes(rate) + "/s · about " + duration(left / rate) + " left" : "starting…";
      if (!ticker) ticker = window.setInterval(schedule, 500);    // keep the rate fresh between progress events
    } else {
      if (ticker) { window.clearInterval(ticker); ticker = null; }
      batchSpeed.textContent = items.length && !finalized ? (failed ? "Finished, with failures: the failed files will not be stacked." : "All files are in.") : "";
    }
    finalizeButton.disabled = finalized || busy() || sessionId === null || inSession.size === 0;
    const again = items.filter((i) => i.state === "failed" && i.retryable).length;
    retryButton.hidden = again === 0 || busy();
    retryButton.textContent = again === failed ? "Retry failed files" : "Retry " + plural(again, "file") + " that may pass now";
    filesHead.hidden = items.length === 0;
    filesCount.textContent = plural(items.length, "file") + (ignored ? " · " + plural(ignored, "other file") + " ignored" : "");
    if (!busy()) releaseWakeLock();
  }

  // --- resuming the batch left open by an earlier visit ---------------------------------------

  async function resume() {
    let stored = null;
    try { stored = localStorage.getItem(STORE); } catch (e) { /* private mode */ }
    if (!stored || !/^\d+$/.test(stored)) {
      // Another browser, or storage cleared: the newest open batch that holds frames, if any.
      try {
        const status = await api("GET", "/api/v1/status");
        const open = status.sessions.find((s) => s.status === "open" && s.chunks.some((c) => c.frames > 0));
        if (open) stored = String(open.id);
      } catch (e) { /* not fatal: start a new batch */ }
    }
    if (!stored) { schedule(); return; }
    try {
      const data = await api("GET", "/api/v1/sessions/" + stored);
      if (data.status !== "open") { forgetSession(); schedule(); return; }
      sessionId = data.id;
      try { localStorage.setItem(STORE, String(sessionId)); } catch (e) { /* private mode */ }
      for (const frame of data.frames) remember(frame);
      if (data.frames.length) {
        $("resume").hidden = false;
        $("resume-count").textContent = plural(data.frames.length, "file");
        const size = data.frames.reduce((s, f) => s + (f.size || 0), 0);
        const objects = [...new Set(data.frames.map((f) => f.object))].join(", ");
        $("resume-detail").textContent = bytes(size) + " · " + objects + " · batch " + data.id;
      }
    } catch (e) {
      if (e.status === 404) forgetSession();
    }
    schedule();
  }

  function startNewBatch() {
    finalized = false;
    items.length = 0;
    listed.clear();
    list.textContent = "";
    ignored = 0;
    result.hidden = true;
    $("resume").hidden = true;
  }

  // "2025-04-09 20:45 UTC" from a chunk key YYYYMMDD.CC_HP… (CC: the day's 15-minute block)
  function blockText(key) {
    const m = /^(\d{4})(\d{2})(\d{2})\.(\d{1,2})_/.exec(key || "");
    if (!m) return key || "one chunk";
    const minutes = 15 * parseInt(m[4], 10);
    const pad = (n) => String(n).padStart(2, "0");
    return m[1] + "-" + m[2] + "-" + m[3] + " " + pad(Math.floor(minutes / 60)) + ":" + pad(minutes % 60) + " UTC";
  }

  finalizeButton.addEventListener("click", async () => {
    finalizeButton.disabled = true;
    try {
      const data = await api("POST", "/api/v1/sessions/" + sessionId + "/finalize");
      finalized = true;
      forgetSession();
      $("resume").hidden = true;
      result.hidden = false;
      result.className = "notice success";
      result.textContent = "Queued " + plural(data.jobs.length, "stacking job") + " (" +
        data.jobs.map((j) => plural(j.frames, "frame") + " from " + blockText(j.chunk_key)).join(", ") + "). ";
      const link = document.createElement("a");
      link.href = "/status";
      link.textContent = "Follow them on the status page.";
      result.appendChild(link);
    } catch (e) {
      result.hidden = false;
      result.className = "notice failure";
      result.textContent = "Finalize failed: " + explain(e.status || 0, e.message)[0];
      if (e.status === 409) forgetSession();
    }
    schedule();
  });

  retryButton.addEventListener("click", () => {
    for (const item of items) {
      if (item.state === "failed" && item.retryable) { item.attempts = 0; item.loaded = 0; item.fill.style.width = "0"; setState(item, "waiting", "waiting"); }
    }
    pump();
  });

  // --- files in: picker, folder picker, drag and drop ------------------------------------------

  for (const id of ["picker", "folder-picker"]) {
    $(id).addEventListener("change", (e) => { add(Array.from(e.target.files)); e.target.value = ""; });
  }
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("picker").click(); }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    add(await droppedFiles(e.dataTransfer));
  });
  // A file dropped beside the zone must not make the browser open it and leave the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { if (!zone.contains(e.target)) e.preventDefault(); });

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

  // --- staying on the page while files go up ----------------------------------------------------

  window.addEventListener("beforeunload", (e) => {
    if (busy()) { e.preventDefault(); e.returnValue = ""; }
  });

  async function holdWakeLock() {
    if (wakeLock || !busy() || !("wakeLock" in navigator) || document.visibilityState !== "visible") return;
    try { wakeLock = await navigator.wakeLock.request("screen"); wakeLock.addEventListener("release", () => { wakeLock = null; }); }
    catch (e) { wakeLock = null; }
  }

  function releaseWakeLock() {
    if (wakeLock) { wakeLock.release().catch(() => {}); wakeLock = null; }
  }

  document.addEventListener("visibilitychange", holdWakeLock);

  resume();
})();
