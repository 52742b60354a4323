// Stack page: the per-frame quality chart, an SVG drawn from the stack's JSON
// (GET /api/v1/stacks/<id> → frame_list). Top: star size (FWHM, px); bottom: stars found.
// Rejected frames are drawn in red and crossed; hovering a frame names it and says why.
"use strict";
(function () {
  const holder = document.getElementById("quality-chart");
  if (!holder) return;
  const NS = "http://www.w3.org/2000/svg";
  let frames = null;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, cls, anchor) {
    const t = el("text", {x, y, class: cls || "", "text-anchor": anchor || "start"}, parent);
    t.textContent = content;
    return t;
  }

  // About *count* round tick values from at or below lo to at or above hi.
  function ticks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
    const out = [];
    for (let v = Math.floor(lo / step) * step; v < hi + step - 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function median(values) {
    const v = values.filter((n) => n !== null && isFinite(n)).sort((a, b) => a - b);
    if (!v.length) return null;
    return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  }

  function draw() {
    if (!frames) return;
    holder.textContent = "";
    if (!frames.length) { text(el("svg", {}, holder), 0, 20, "No frame numbers recorded."); return; }
    const W = Math.max(300, holder.clientWidth), panelH = 120, gap = 44, top = 24, left = 46, right = 12;
    const H = top + panelH * 2 + gap + 30;
    const svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "quality-svg",
                           role: "img", "aria-label": "Star size and star count per frame"}, holder);
    const n = frames.length, plotW = W - left - right, band = plotW / n;
    const cx = (i) => left + band * (i + 0.5);

    const fwhms = frames.map((f) => f.fwhm_px).filter((v) => v !== null && isFinite(v));
    const fLo = fwhms.length ? Math.min(...fwhms) : 0, fHi = fwhms.length ? Math.max(...fwhms) : 1;
    const pad = Math.max(0.2, (fHi - fLo) * 0.15);
    const fT = ticks(Math.max(0, fLo - pad), fHi + pad, 3);
    const f0 = fT[0], f1 = fT[fT.length - 1];
    const fy = (v) => top + panelH - (v - f0) / (f1 - f0) * panelH;

    const starMax = Math.max(1, ...frames.map((f) => f.stars || 0));
    const sT = ticks(0, starMax, 3);
    const s1 = sT[sT.length - 1];
    const sTop = top + panelH + gap;
    const sy = (v) => sTop + panelH - v / s1 * panelH;

    // grids and axes
    for (const [values, y, panelTop, title] of [[fT, fy, top, "FWHM (px)"], [sT, sy, sTop, "stars"]]) {
      el("rect", {x: left, y: panelTop, width: plotW, height: panelH, class: "plot-bg"}, svg);
      for (const v of values) {
        const yy = y(v);
        if (yy < panelTop - 0.5 || yy > panelTop + panelH + 0.5) continue;
        el("line", {x1: left, x2: left + plotW, y1: yy, y2: yy, class: "grid"}, svg);
        text(svg, left - 6, yy + 4, String(v), "tick", "end");
      }
      text(svg, left, panelTop - 9, title, "axis-title");
    }

    // median lines of the frames used
    const used = frames.filter((f) => f.used);
    const mF = median(used.map((f) => f.fwhm_px)), mS = median(used.map((f) => f.stars));
    if (mF !== null) {
      el("line", {x1: left, x2: left + plotW, y1: fy(mF), y2: fy(mF), class: "median"}, svg);
      text(svg, left + plotW - 4, fy(mF) - 4, "median " + mF.toFixed(2), "median-label", "end");
    }
    if (mS !== null) el("line", {x1: left, x2: left + plotW, y1: sy(mS), y2: sy(mS), class: "median"}, svg);

    // FWHM line through the frames used
    const path = used.filter((f) => f.fwhm_px !== null).map((f) => {
      const i = frames.indexOf(f);
      return cx(i).toFixed(1) + "," + fy(f.fwhm_px).toFixed(1);
    });
    if (path.length > 1) el("polyline", {points: path.join(" "), class: "fwhm-line"}, svg);

    const barW = Math.max(1, Math.min(18, band * 0.7));
    const r = Math.max(1.6, Math.min(4, band * 0.35));
    frames.forEach((f, i) => {
      const g = el("g", {class: "frame " + (f.used ? "used" : "rejected")}, svg);
      el("rect", {x: left + band * i, y: top, width: band, height: panelH * 2 + gap, class: "hover"}, g);
      const stars = f.stars || 0;
      el("rect", {x: cx(i) - barW / 2, y: sy(stars), width: barW, height: Math.max(0.5, sTop + panelH - sy(stars)), class: "col"}, g);
      if (f.fwhm_px !== null && isFinite(f.fwhm_px)) {
        if (f.used) el("circle", {cx: cx(i), cy: fy(f.fwhm_px), r, class: "dot"}, g);
        else cross(g, cx(i), fy(f.fwhm_px), r + 1.5);
      } else if (!f.used) {
        cross(g, cx(i), top + panelH - r - 3, r + 1.5);
      }
      const title = el("title", {}, g);
      title.textContent = "#" + (i + 1) + " " + f.filename + (f.date_obs ? "\n" + f.date_obs.slice(0, 19).replace("T", " ") + " UTC" : "") + "\n" +
        (f.used ? "used" : "rejected: " + (f.reason || "no reason given")) +
        (f.fwhm_px !== null ? "\nFWHM " + f.fwhm_px.toFixed(2) + " px" : "") + "\n" + stars + " stars";
    });

    // frame numbers along the bottom
    const every = Math.max(1, Math.ceil(n / Math.floor(plotW / 34)));
    for (let i = 0; i < n; i += every) text(svg, cx(i), sTop + panelH + 16, String(i + 1), "tick", "middle");
    text(svg, left + plotW, H - 2, "frame, in the order taken", "axis-title", "end");
  }

  function cross(g, x, y, size) {
    el("path", {d: "M" + (x - size) + "," + (y - size) + "L" + (x + size) + "," + (y + size) +
                   "M" + (x - size) + "," + (y + size) + "L" + (x + size) + "," + (y - size), class: "cross"}, g);
  }

  fetch("/api/v1/stacks/" + holder.dataset.stack, {credentials: "same-origin", headers: {"Accept": "application/json"}})
    .then((r) => r.ok ? r.json() : Promise.reject(new Error(r.statusText)))
    .then((data) => { frames = data.frame_list || []; draw(); })
    .catch(() => { holder.textContent = "The per-frame numbers could not be loaded."; });

  let pending = null;
  window.addEventListener("resize", () => { clearTimeout(pending); pending = setTimeout(draw, 150); });
})();

// Stack page: the stretch control. The server sends the calibrated picture once, 16-bit
// (GET /stacks/<id>/rendition.bin, format in lib/pictures.py); every move of a slider redraws it on a
// canvas laid over the PNG preview, with the same stretch as lib/stacking/preview.py stretch_rgb:
//   shifted = max((v - black) / (white - black), 0) per channel, M = brightest channel,
//   out = shifted * asinh(β·min(M, 1)) / (asinh(β)·M)
// The "as shown" download links carry the same black point and strength to the server.
(function () {
  const box = document.getElementById("stretch");
  const picture = document.getElementById("picture");
  if (!box || !picture) return;
  const img = document.getElementById("preview");
  const canvas = document.getElementById("stretch-canvas");
  const blackInput = document.getElementById("stretch-black");
  const strengthInput = document.getElementById("stretch-strength");
  const blackOut = document.getElementById("stretch-black-value");
  const strengthOut = document.getElementById("stretch-strength-value");
  const links = [...document.querySelectorAll("[data-as-shown]")];
  const stack = box.dataset.stack;
  let meta = null, pixels = null, image = null, pending = false;

  // strength slider: 0..100 ↔ β = 10^(0.5 + 4.5·t/100), 3 .. 100 000 on a log scale
  const toBeta = (t) => Math.pow(10, 0.5 + 4.5 * t / 100);
  const fromBeta = (b) => Math.max(0, Math.min(100, (Math.log10(b) - 0.5) / 4.5 * 100));

  function settings() {
    return {black: parseFloat(blackInput.value), strength: toBeta(parseFloat(strengthInput.value))};
  }

  function updateLinks() {
    const s = settings();
    const query = "?black=" + s.black.toFixed(2) + "&strength=" + s.strength.toFixed(1);
    for (const a of links) a.href = a.dataset.asShown + query;
    blackOut.textContent = s.black.toFixed(1) + " σ";
    strengthOut.textContent = s.strength < 100 ? s.strength.toFixed(1) : Math.round(s.strength);
  }

  function redraw() {
    pending = false;
    if (!meta) return;
    const s = settings();
    const scale = (meta.hi - meta.lo) / 65535;
    const black = -s.black * meta.noise, span = Math.max(meta.white - black, 1e-12);
    // shifted = v·a + b, clipped at 0; the factor depends only on M, a 16-bit value: a table
    const a = scale / span, b = (meta.lo - black) / span;
    const norm = Math.asinh(s.strength), beta = s.strength;
    const table = new Float32Array(65536);
    for (let v = 0; v < 65536; v++) {
      const m = v * a + b;
      table[v] = m > 1e-7 ? 255 * Math.asinh(beta * Math.min(m, 1)) / (norm * m) : 255 * beta / norm;
    }
    const out = image.data, n = meta.width * meta.height;
    for (let i = 0, j = 0; i < n; i++, j += 3) {
      const r = pixels[j], g = pixels[j + 1], bl = pixels[j + 2];
      const f = table[r > g ? (r > bl ? r : bl) : (g > bl ? g : bl)];
      const k = i * 4;
      out[k] = Math.max(0, r * a + b) * f + 0.5;
      out[k + 1] = Math.max(0, g * a + b) * f + 0.5;
      out[k + 2] = Math.max(0, bl * a + b) * f + 0.5;
      out[k + 3] = 255;
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.hidden = false;
    picture.dataset.stretched = s.black.toFixed(2) + "," + s.strength.toFixed(1);
  }

  function changed() {
    updateLinks();
    if (!meta) { wanted = true; load(); return; }
    if (!pending) { pending = true; requestAnimationFrame(redraw); }
  }

  // where the sliders start: the preview's own stretch, from the FITS header (the page) or the rendition
  const defaults = box.dataset.black ? {black: parseFloat(box.dataset.black), strength: parseFloat(box.dataset.strength)} : null;
  let loading = null, wanted = false;

  function reset() {
    const d = defaults || (meta && {black: -meta.black / meta.noise, strength: meta.strength});
    if (!d) return;
    blackInput.value = d.black.toFixed(1);
    strengthInput.value = fromBeta(d.strength).toFixed(1);
    updateLinks();
    canvas.hidden = true;       // the preview PNG itself: full resolution, the same stretch
    delete picture.dataset.stretched;
  }

  // The rendition (a few MB) is fetched when the owner first reaches for a slider, not on every view.
  function load() {
    if (loading) return loading;
    box.dataset.loading = "1";
    loading = fetch("/stacks/" + stack + "/rendition.bin", {credentials: "same-origin"})
      .then((r) => r.ok ? Promise.all([r.headers.get("X-Rendition"), r.arrayBuffer()]) : Promise.reject(new Error(r.statusText)))
      .then(([header, buffer]) => {
        meta = JSON.parse(header);
        pixels = new Uint16Array(buffer);   // little-endian, as every browser's typed arrays are
        canvas.width = meta.width;
        canvas.height = meta.height;
        image = canvas.getContext("2d").createImageData(meta.width, meta.height);
        delete box.dataset.loading;
        box.dataset.ready = "1";
        if (!defaults) reset();
        if (wanted) changed();
      })
      .catch(() => { box.hidden = true; });
    return loading;
  }

  blackInput.addEventListener("input", changed);
  strengthInput.addEventListener("input", changed);
  document.getElementById("stretch-reset").addEventListener("click", reset);
  for (const type of ["pointerdown", "focusin"]) box.addEventListener(type, load);
  if (defaults) reset();
  else load().then(() => { box.hidden = false; });   // a stack from before headers carried its stretch

  // the picture's own orientation: a portrait stack gets a tall, narrow viewer beside the numbers
  function orient() {
    const layout = document.querySelector(".stack");
    if (layout && img.naturalWidth) layout.classList.toggle("portrait", img.naturalHeight > img.naturalWidth);
  }
  if (img.complete) orient(); else img.addEventListener("load", orient);
})();
