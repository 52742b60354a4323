// Stack page, for plate-solved stacks: RA/Dec under the pointer, an optional RA/Dec grid, labelled
// outlines of the catalogue objects in the field, and a scale bar in arcminutes. Everything comes from
// GET /api/v1/stacks/<id> ("wcs", "objects" and "preview"); the overlay is an SVG laid over the picture
// (the preview or the stretch canvas) on the box it takes on screen, re-placed whenever static/zoom.js
// moves the picture. It is not transformed with the picture: drawn at screen scale, its text and lines
// stay sharp and thin at any zoom (the picture's layer is rasterised once and scaled).
//
// Pixels: the API speaks FITS image pixels, 0-based, x along NAXIS1 and y along NAXIS2. The SVG's user
// units are the whole FITS flipped (the preview shows the first FITS row at the bottom): FITS pixel
// (x, y) is at (x + 0.5, H - 0.5 - y). The preview PNG shows only the box "preview" {x0, y0, width,
// height} (cropped to what most frames cover), so the SVG's viewBox is that box: whatever lies outside
// it is clipped.
"use strict";
(function () {
  const viewport = document.getElementById("viewport");
  const img = document.getElementById("preview");
  const layer = img && (img.closest(".picture") || img);   // what zoom.js transforms
  const tools = document.querySelector(".viewer-tools");
  const match = location.pathname.match(/^\/stacks\/(\d+)/);
  if (!viewport || !img || !tools || !match) return;
  const NS = "http://www.w3.org/2000/svg";
  const RAD = Math.PI / 180;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // --- the TAN projection (the WCS's linear part), degrees in and out ---------------------------
  function projection(tan) {
    const [a0, d0] = tan.crval.map((v) => v * RAD);
    const [[c11, c12], [c21, c22]] = tan.cd;
    const det = c11 * c22 - c12 * c21;
    return {
      toSky(x, y) {                                   // 0-based FITS pixel -> [ra, dec]
        const dx = x - tan.crpix0[0], dy = y - tan.crpix0[1];
        const xi = (c11 * dx + c12 * dy) * RAD, eta = (c21 * dx + c22 * dy) * RAD;
        const den = Math.cos(d0) - eta * Math.sin(d0);
        const ra = a0 + Math.atan2(xi, den);
        const dec = Math.atan2((eta * Math.cos(d0) + Math.sin(d0)) * Math.cos(ra - a0), den);
        return [((ra / RAD) % 360 + 360) % 360, dec / RAD];
      },
      toPixel(ra, dec) {                              // [ra, dec] -> 0-based FITS pixel, null behind
        const a = ra * RAD, d = dec * RAD;
        const cosc = Math.sin(d0) * Math.sin(d) + Math.cos(d0) * Math.cos(d) * Math.cos(a - a0);
        if (cosc <= 0) return null;
        const xi = Math.cos(d) * Math.sin(a - a0) / cosc / RAD;
        const eta = (Math.cos(d0) * Math.sin(d) - Math.sin(d0) * Math.cos(d) * Math.cos(a - a0)) / cosc / RAD;
        return [tan.crpix0[0] + (c22 * xi - c12 * eta) / det, tan.crpix0[1] + (-c21 * xi + c11 * eta) / det];
      },
    };
  }

  // rounded first, then split, so that 59.96 s reads 1 m 00.0 s and never 60.0 s
  function raText(ra) {
    const tenths = Math.round(((ra % 360) + 360) % 360 / 15 * 36000) % (24 * 36000);
    const hh = Math.floor(tenths / 36000), mm = Math.floor(tenths / 600) % 60, ss = (tenths % 600) / 10;
    return `${hh}h ${String(mm).padStart(2, "0")}m ${ss.toFixed(1).padStart(4, "0")}s`;
  }

  function decText(dec) {
    const sign = dec < 0 ? "−" : "+", seconds = Math.round(Math.abs(dec) * 3600);
    const dd = Math.floor(seconds / 3600), mm = Math.floor(seconds / 60) % 60, ss = seconds % 60;
    return `${sign}${dd}° ${String(mm).padStart(2, "0")}′ ${String(ss).padStart(2, "0")}″`;
  }

  function control(label, name, checked) {
    const wrap = document.createElement("label");
    wrap.className = "hint sky-toggle";
    const box = document.createElement("input");
    box.type = "checkbox"; box.name = name; box.checked = checked;
    wrap.append(box, " " + label);
    tools.appendChild(wrap);
    return box;
  }

  function start(stack) {
    const wcs = stack.wcs;
    const status = document.createElement("span");
    status.className = "hint sky-status";
    tools.appendChild(status);
    if (!wcs || !wcs.solved || !wcs.tan) {
      status.textContent = "not plate solved" + (wcs && wcs.reason ? ": " + wcs.reason : "");
      return;
    }
    const W = wcs.width, H = wcs.height, proj = projection(wcs.tan);
    const svgX = (x) => x + 0.5, svgY = (y) => H - 0.5 - y;
    // the part of the FITS the preview shows (a stack from before cropping shows all of it)
    const shown = stack.preview || {x0: 0, y0: 0, width: W, height: H};
    const left = shown.x0, top = H - shown.y0 - shown.height;          // the box, in SVG user units
    const inBox = (x, y) => x >= shown.x0 - 0.5 && x <= shown.x0 + shown.width - 0.5 &&
                            y >= shown.y0 - 0.5 && y <= shown.y0 + shown.height - 0.5;
    // the PNG is the box 1:1; one of another size (a deep stack written before its header recorded the
    // crop) would put every label in the wrong place: better none
    if (img.naturalWidth && (img.naturalWidth !== shown.width || img.naturalHeight !== shown.height)) {
      status.textContent = `plate solved · ${wcs.scale_arcsec.toFixed(2)}″/px · no overlay: this preview ` +
                           "does not say which part of the stack it shows (it will when the stack is next updated)";
      return;
    }

    const svg = el("svg", {class: "sky-overlay", viewBox: `${left} ${top} ${shown.width} ${shown.height}`,
                           preserveAspectRatio: "none", "aria-hidden": "true"}, viewport);
    const grid = el("g", {class: "sky-grid"}, svg);
    const outlines = el("g", {class: "sky-objects"}, svg);
    const readout = document.createElement("span");
    readout.className = "hint sky-readout";
    readout.id = "sky-readout";
    readout.textContent = "RA/Dec: point at the picture";
    const bar = document.createElement("span");
    bar.className = "sky-scalebar";
    bar.innerHTML = '<span class="bar"></span><span class="label"></span>';
    const gridBox = control("Grid", "sky-grid", false);
    const objectBox = control("Objects", "sky-objects", true);
    tools.append(bar, readout);

    // --- objects ---------------------------------------------------------------------------------
    // Strokes keep their width on screen (vector-effect in the CSS); text is sized in ems of the
    // SVG's font size, which follow() keeps at 12 CSS pixels whatever the zoom.
    // An object wholly outside the preview's box is left out; one across its edge is clipped, its label
    // kept inside the box.
    for (const o of stack.objects || []) {
      const corners = o.outline && o.outline.length ? o.outline : [[o.x, o.y]];
      const xs = corners.map(([x]) => x), ys = corners.map(([, y]) => y);
      if (Math.max(...xs) < shown.x0 - 0.5 || Math.min(...xs) > shown.x0 + shown.width - 0.5 ||
          Math.max(...ys) < shown.y0 - 0.5 || Math.min(...ys) > shown.y0 + shown.height - 0.5) continue;
      const points = (o.outline || []).map(([x, y]) => `${svgX(x).toFixed(1)},${svgY(y).toFixed(1)}`).join(" ");
      const g = el("g", {class: "sky-object", "data-name": o.name}, outlines);
      if (points) el("polygon", {points}, g);
      const above = Math.min(...ys.map(svgY));
      const label = el("text", {x: Math.min(Math.max(svgX(o.x), left), left + shown.width),
                                y: Math.max(above, top), dy: above < top ? "1em" : "-0.5em", "text-anchor": "middle"}, g);
      label.textContent = o.name;
      el("title", {}, g).textContent = [o.name, ...(o.aliases || [])].join(" · ") + ` (${o.type})`;
    }

    // --- grid: RA and Dec lines at a round step, a few across the field --------------------------
    const STEPS = [1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600].map((m) => m / 60);   // degrees
    function drawGrid() {
      grid.textContent = "";
      const corners = wcs.footprint;
      const decs = corners.map((c) => c[1]);
      const ras = corners.map((c) => ((c[0] - wcs.ra + 540) % 360) - 180);   // relative to the centre
      const decLo = Math.min(...decs), decHi = Math.max(...decs);
      const span = Math.min(decHi - decLo, (Math.max(...ras) - Math.min(...ras)) * Math.cos(wcs.dec * RAD));
      const step = STEPS.find((s) => span / s <= 5) || 10;
      const raStep = STEPS.find((s) => s >= step / Math.max(Math.cos(wcs.dec * RAD), 0.05)) || step;
      const raLo = wcs.ra + Math.min(...ras), raHi = wcs.ra + Math.max(...ras);
      const pad = 2 * step;
      // a line's label sits where it enters the picture on the left (Dec) or at the top (RA), inside
      const line = (pts, text, atTop) => {
        const inside = pts.filter(Boolean);
        if (inside.length < 2) return;
        el("polyline", {points: inside.map(([x, y]) => `${svgX(x).toFixed(1)},${svgY(y).toFixed(1)}`).join(" ")}, grid);
        const seen = inside.filter(([x, y]) => inBox(x, y));
        if (!seen.length) return;
        const edge = seen.reduce((a, b) => (atTop ? svgY(b[1]) < svgY(a[1]) : svgX(b[0]) < svgX(a[0])) ? b : a);
        const t = el("text", {x: svgX(edge[0]), y: svgY(edge[1]), dx: "0.3em", dy: atTop ? "1em" : "-0.3em"}, grid);
        t.textContent = text;
      };
      for (let d = Math.ceil((decLo - pad) / step) * step; d <= decHi + pad; d += step) {
        const pts = [];
        for (let k = 0; k <= 60; k++) pts.push(proj.toPixel(raLo - pad + (raHi - raLo + 2 * pad) * k / 60, d));
        line(pts, decText(d).replace(/ 00″$/, ""), false);
      }
      for (let r = Math.ceil((raLo - pad) / raStep) * raStep; r <= raHi + pad; r += raStep) {
        const pts = [];
        for (let k = 0; k <= 60; k++) pts.push(proj.toPixel(r, decLo - pad + (decHi - decLo + 2 * pad) * k / 60));
        line(pts, raText(r).replace(/\.0s$/, "s"), true);
      }
    }

    // --- following the preview: the SVG takes the box the (zoomed, panned) preview has on screen ------
    function follow() {
      const r = img.getBoundingClientRect(), v = viewport.getBoundingClientRect();
      svg.style.left = (r.left - v.left - viewport.clientLeft) + "px";
      svg.style.top = (r.top - v.top - viewport.clientTop) + "px";
      svg.style.width = r.width + "px";
      svg.style.height = r.height + "px";
      // scale bar: a round number of arcminutes that shows as 60-160 CSS pixels at this zoom
      const cssPerPixel = r.width / shown.width;
      if (!(cssPerPixel > 0)) return;
      svg.style.fontSize = (12 / cssPerPixel).toFixed(2) + "px";
      const arcmin = [0.5, 1, 2, 5, 10, 15, 20, 30, 60].find((m) => m * 60 / wcs.scale_arcsec * cssPerPixel >= 60) || 60;
      bar.querySelector(".bar").style.width = (arcmin * 60 / wcs.scale_arcsec * cssPerPixel).toFixed(1) + "px";
      bar.querySelector(".label").textContent = arcmin >= 1 ? `${arcmin}′` : `${arcmin * 60}″`;
      bar.dataset.arcmin = arcmin;
    }
    new MutationObserver(follow).observe(layer, {attributes: true, attributeFilter: ["style"]});
    if (window.ResizeObserver) new ResizeObserver(follow).observe(img);   // e.g. the portrait layout
    window.addEventListener("resize", follow);
    if (img.complete) follow(); else img.addEventListener("load", follow);

    viewport.addEventListener("pointermove", (e) => {
      const r = img.getBoundingClientRect();
      const x = shown.x0 + (e.clientX - r.left) / r.width * shown.width - 0.5;
      const y = shown.y0 + shown.height - 0.5 - (e.clientY - r.top) / r.height * shown.height;
      if (!inBox(x, y)) return;
      const [ra, dec] = proj.toSky(x, y);
      readout.textContent = `RA ${raText(ra)}  Dec ${decText(dec)}`;
      readout.dataset.ra = ra.toFixed(5);
      readout.dataset.dec = dec.toFixed(5);
    });
    viewport.addEventListener("pointerleave", () => { readout.textContent = "RA/Dec: point at the picture"; });

    gridBox.addEventListener("change", () => {
      grid.style.display = gridBox.checked ? "" : "none";
      if (gridBox.checked && !grid.childNodes.length) drawGrid();
    });
    grid.style.display = "none";
    objectBox.addEventListener("change", () => { outlines.style.display = objectBox.checked ? "" : "none"; });
    status.textContent = `plate solved · ${wcs.scale_arcsec.toFixed(2)}″/px`;
  }

  // drawn once the preview has loaded: its size is checked against the box the API gives
  const loaded = img.complete ? Promise.resolve() : new Promise((done) => {
    img.addEventListener("load", done, {once: true});
    img.addEventListener("error", done, {once: true});
  });
  Promise.all([fetch(`/api/v1/stacks/${match[1]}`, {credentials: "same-origin"}).then((r) => (r.ok ? r.json() : null)), loaded])
    .then(([stack]) => { if (stack) start(stack); })
    .catch(() => {});
})();
