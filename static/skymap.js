// Sky map: the stacks the viewer may see on an Aitoff projection of the sky (d3-geo-projection's
// geoAitoff, RA increasing to the left as on the sky), with an RA/Dec graticule, zoom, a box to
// select stacks, a timeline with a time-window brush, and "Download all" for the selection.
// Plate-solved stacks also show their footprint: the field's real, rotated outline on the sky.
"use strict";
(function () {
  const holder = document.getElementById("sky");
  if (!holder || !window.d3) return;
  const d3 = window.d3;
  const $ = (id) => document.getElementById(id);
  const tip = $("sky-tip"), coords = $("cursor-coords");
  const MAX_DOWNLOAD = 1000;
  const JOIN_DEG = 0.75;                 // stacks closer than this (degrees) share a dot
  const MAX_FOOTPRINTS = 5000;           // outlines drawn at most (newest first); the dots show the rest

  let stacks = [];                       // every stack the viewer may see
  let windowRange = null;                // [Date, Date] from the timeline brush, or null for all time
  let region = null;                     // [x0, y0, x1, y1] in projected units (0..1 of the map width)
  let selectAllInWindow = false;
  let selected = [];
  let mode = "select";
  let transform = d3.zoomIdentity;
  let W = 0, H = 0;
  let svg, zoomLayer, footprintLayer, pointLayer, labelLayer, boxRect, projection, geoPath, zoom, bins = [];

  // --- words ---------------------------------------------------------------------------------

  function raText(ra) {
    ra = ((ra % 360) + 360) % 360;
    const minutes = Math.round(ra / 15 * 60) % (24 * 60);
    return Math.floor(minutes / 60) + "h " + String(minutes % 60).padStart(2, "0") + "m";
  }
  function decText(dec) { return (dec >= 0 ? "+" : "−") + Math.abs(dec).toFixed(1) + "°"; }
  function separation(a, b) {            // small-angle distance in degrees, fine below a few degrees
    let dra = Math.abs(a.ra - b.ra);
    if (dra > 180) dra = 360 - dra;
    return Math.hypot(dra * Math.cos((a.dec + b.dec) / 2 * Math.PI / 180), a.dec - b.dec);
  }
  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
  function hours(s) { return s >= 5400 ? (s / 3600).toFixed(1) + " h" : s >= 120 ? Math.round(s / 60) + " min" : Math.round(s) + " s"; }
  function mb(n) { return n >= 1e9 ? (n / 1e9).toFixed(2) + " GB" : (n / 1e6).toFixed(1) + " MB"; }
  const day = d3.utcFormat("%Y-%m-%d");

  function parseDate(text) {
    if (!text) return null;
    const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
    const d = new Date(iso);
    return isNaN(d) ? null : d;
  }

  // --- data --------------------------------------------------------------------------------------

  fetch("/api/v1/skymap", {credentials: "same-origin", headers: {"Accept": "application/json"}})
    .then((r) => r.ok ? r.json() : Promise.reject(new Error(r.statusText)))
    .then((data) => {
      const at = Object.fromEntries(data.fields.map((f, i) => [f, i]));
      stacks = data.stacks.map((row) => ({
        id: row[at.id], ra: row[at.ra], dec: row[at.dec], date: parseDate(row[at.date_beg]),
        kind: row[at.kind], object: row[at.object], frames: row[at.frames], exposure: row[at.exposure_s],
        size: row[at.fits_size], owner: row[at.owner], mine: row[at.mine],
        footprint: at.footprint === undefined ? null : outline(row[at.footprint]),
      }));
      build();
      drawTimeline();
      refresh();
    })
    .catch(() => { holder.textContent = "The map could not be loaded. Reload the page to try again."; });

  // A footprint's four [ra, dec] corners as a GeoJSON polygon. d3-geo takes a ring's winding to say
  // which side is inside: a ring that would enclose more than half the sky is turned round.
  function outline(corners) {
    if (!corners || corners.length < 3) return null;
    const ring = corners.map(([ra, dec]) => [ra, dec]);
    ring.push(ring[0]);
    const polygon = {type: "Polygon", coordinates: [ring]};
    if (d3.geoArea(polygon) > 2 * Math.PI) ring.reverse();
    return polygon;
  }

  // --- the map --------------------------------------------------------------------------------

  function build() {
    holder.textContent = "";
    W = Math.max(280, holder.clientWidth);
    H = Math.round(W / 2) + 8;
    projection = d3.geoAitoff().reflectX(true).rotate([-180, 0]).precision(0.2)
      .fitExtent([[6, 6], [W - 6, H - 6]], {type: "Sphere"});
    const path = geoPath = d3.geoPath(projection);

    svg = d3.select(holder).append("svg")
      .attr("viewBox", "0 0 " + W + " " + H).attr("width", W).attr("height", H)
      .attr("class", "skymap mode-" + mode).attr("role", "img")
      .attr("aria-label", "Aitoff map of the sky with the stacks you may see");
    zoomLayer = svg.append("g").attr("class", "zoom-layer");
    zoomLayer.append("path").datum({type: "Sphere"}).attr("class", "sphere").attr("d", path);
    zoomLayer.append("path").datum(d3.geoGraticule().step([5, 5]).precision(1)())
      .attr("class", "graticule minor").attr("d", path);
    zoomLayer.append("path").datum(d3.geoGraticule().step([15, 15]).precision(1)())
      .attr("class", "graticule").attr("d", path);
    zoomLayer.append("path").datum({type: "LineString", coordinates: [[0, 0], [90, 0], [180, 0], [270, 0], [360, 0]]})
      .attr("class", "equator").attr("d", path);
    zoomLayer.append("path").datum({type: "Sphere"}).attr("class", "outline").attr("d", path);

    labelLayer = zoomLayer.append("g").attr("class", "labels");
    for (let h = 0; h < 24; h += W < 640 ? 4 : 2) {
      const [x, y] = projection([h * 15 + 0.001, 0]);
      labelLayer.append("text").attr("x", x).attr("y", y - 4).attr("text-anchor", "middle")
        .attr("class", "ra-label").text(h + "h");
    }
    for (const dec of [-60, -30, 30, 60]) {
      const [x, y] = projection([180, dec]);
      labelLayer.append("text").attr("x", x + 3).attr("y", y - 3).attr("class", "dec-label")
        .text((dec > 0 ? "+" : "−") + Math.abs(dec) + "°");
    }
    footprintLayer = zoomLayer.append("g").attr("class", "footprints");
    pointLayer = zoomLayer.append("g").attr("class", "points");
    boxRect = svg.append("rect").attr("class", "select-box").attr("visibility", "hidden");

    if (!stacks.length) {
      svg.append("text").attr("x", W / 2).attr("y", H / 2).attr("text-anchor", "middle").attr("class", "empty-label")
        .text("No stacks on the map yet");
    }

    zoom = d3.zoom().scaleExtent([1, 60]).translateExtent([[0, 0], [W, H]]).extent([[0, 0], [W, H]])
      .filter((event) => {
        if (event.type === "wheel") return true;
        if (mode === "pan") return !event.button;
        return event.type === "touchstart" && event.touches && event.touches.length > 1;
      })
      .on("zoom", (event) => { transform = event.transform; applyZoom(); });
    svg.call(zoom).on("dblclick.zoom", null);
    svg.call(zoom.transform, transform);

    svg.on("pointerdown", boxStart).on("pointermove", hover).on("pointerleave", () => { tip.hidden = true; coords.textContent = ""; });
  }

  function applyZoom() {
    zoomLayer.attr("transform", transform);
    const k = transform.k;
    svg.classed("zoomed-in", k >= 3);
    // labels and dots keep their size on screen whatever the zoom: drawn at 1/k in a layer scaled k
    // (a style, not an attribute: the stylesheet's font-size would override an attribute)
    labelLayer.selectAll("text").style("font-size", (11 / k) + "px");
    pointLayer.selectAll("circle").attr("r", (b) => radius(b) / k);
    drawBox();
  }

  function radius(bin) { return 3.2 + 2.4 * Math.sqrt(bin.stacks.length); }
  function screenRadius(bin) { return radius(bin); }   // drawn r is radius/k in a layer scaled k

  function inWindow(s) {
    return !windowRange || (s.date && s.date >= windowRange[0] && s.date <= windowRange[1]);
  }

  function refresh() {
    const shown = stacks.filter(inWindow);
    // One dot per pointing: a stack joins the first dot within JOIN_DEG of it (looked up in the
    // 1° cells around it), else starts a dot of its own at its position.
    const cells = new Map();
    bins = [];
    for (const s of shown) {
      const cx = Math.floor(s.ra), cy = Math.floor(s.dec);
      let bin = null;
      for (let dx = -1; dx <= 1 && !bin; dx++) {
        for (let dy = -1; dy <= 1 && !bin; dy++) {
          for (const b of cells.get(((cx + dx + 360) % 360) + ":" + (cy + dy)) || []) {
            if (separation(b, s) < JOIN_DEG) { bin = b; break; }
          }
        }
      }
      if (!bin) {
        bin = {key: s.id, ra: s.ra, dec: s.dec, stacks: []};
        [bin.x, bin.y] = projection([bin.ra, bin.dec]);
        const cell = cx + ":" + cy;
        if (!cells.has(cell)) cells.set(cell, []);
        cells.get(cell).push(bin);
        bins.push(bin);
      }
      bin.stacks.push(s);
    }
    bins.sort((a, b) => b.stacks.length - a.stacks.length);   // small dots on top of big ones
    computeSelection(shown);
    const chosen = new Set(selected.map((s) => s.id));
    pointLayer.selectAll("circle").data(bins, (b) => b.key).join("circle")
      .attr("cx", (b) => b.x).attr("cy", (b) => b.y)
      .attr("class", (b) => "bin" + (b.stacks.some((s) => chosen.has(s.id)) ? " selected" : "") +
                            (b.stacks.some((s) => s.mine) ? " mine" : ""))
      .attr("data-count", (b) => b.stacks.length);
    footprintLayer.selectAll("path")
      .data(shown.filter((s) => s.footprint).slice(0, MAX_FOOTPRINTS), (s) => s.id).join("path")
      .attr("d", (s) => geoPath(s.footprint)).attr("data-id", (s) => s.id)
      .attr("class", (s) => "footprint" + (chosen.has(s.id) ? " selected" : ""))
      .attr("fill", (s) => chosen.has(s.id) ? "rgba(255, 207, 107, .25)" : "rgba(121, 176, 255, .18)")
      .attr("stroke", (s) => chosen.has(s.id) ? "#fff2cc" : "#79b0ff")
      .attr("vector-effect", "non-scaling-stroke").attr("pointer-events", "none");
    applyZoom();
    drawSelection();
    drawTimelineBars();
  }

  function computeSelection(shown) {
    if (selectAllInWindow) { selected = shown; return; }
    if (!region) { selected = []; return; }
    const [x0, y0, x1, y1] = region.map((v) => v * W);
    selected = shown.filter((s) => {
      const [x, y] = projection([s.ra, s.dec]);
      return x >= x0 && x <= x1 && y >= y0 && y <= y1;
    });
  }

  // --- hovering ---------------------------------------------------------------------------------

  function hover(event) {
    const [mx, my] = d3.pointer(event, svg.node());
    const [px, py] = transform.invert([mx, my]);
    const sky = projection.invert([px, py]);
    const onSky = sky && d3.geoContains({type: "Sphere"}, sky) && isFinite(sky[0]);
    coords.textContent = onSky ? "RA " + raText(sky[0]) + " · Dec " + decText(sky[1]) : "";
    let best = null, bestD = Infinity;
    for (const bin of bins) {
      const [sx, sy] = transform.apply([bin.x, bin.y]);
      const d = Math.hypot(sx - mx, sy - my);
      if (d < Math.max(9, screenRadius(bin) + 4) && d < bestD) { best = bin; bestD = d; }
    }
    if (!best || drawing) { tip.hidden = true; return; }
    const objects = d3.rollups(best.stacks, (v) => v.length, (s) => s.object).sort((a, b) => b[1] - a[1]);
    tip.replaceChildren();
    const head = document.createElement("b");
    head.textContent = plural(best.stacks.length, "stack") + " here";
    const where = document.createElement("span");
    where.textContent = "RA " + raText(best.ra) + " · Dec " + decText(best.dec);
    tip.append(head, where);
    for (const [name, n] of objects.slice(0, 4)) {
      const line = document.createElement("span");
      line.textContent = name + (objects.length > 1 || n > 1 ? " · " + n : "");
      tip.appendChild(line);
    }
    if (objects.length > 4) {
      const more = document.createElement("span");
      more.textContent = "and " + (objects.length - 4) + " more objects";
      tip.appendChild(more);
    }
    const host = holder.getBoundingClientRect(), panel = holder.parentElement.getBoundingClientRect();
    tip.hidden = false;
    const left = Math.min(host.left - panel.left + mx + 14, panel.width - tip.offsetWidth - 8);
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = (host.top - panel.top + my + 14) + "px";
  }

  // --- box selection ---------------------------------------------------------------------------

  let drawing = null;

  function boxStart(event) {
    if (mode !== "select" || event.button !== 0 || !event.isPrimary) return;
    event.preventDefault();
    const start = d3.pointer(event, svg.node());
    drawing = {start, end: start};
    svg.node().setPointerCapture(event.pointerId);
    const move = (e) => { drawing.end = d3.pointer(e, svg.node()); drawBox(); };
    const up = (e) => {
      svg.node().removeEventListener("pointermove", move);
      svg.node().removeEventListener("pointerup", up);
      svg.node().removeEventListener("pointercancel", up);
      const [a, b] = [drawing.start, d3.pointer(e, svg.node())];
      drawing = null;
      if (Math.abs(a[0] - b[0]) < 4 && Math.abs(a[1] - b[1]) < 4) {
        clickAt(a);
        return;
      }
      const p0 = transform.invert([Math.min(a[0], b[0]), Math.min(a[1], b[1])]);
      const p1 = transform.invert([Math.max(a[0], b[0]), Math.max(a[1], b[1])]);
      region = [p0[0] / W, p0[1] / W, p1[0] / W, p1[1] / W];
      selectAllInWindow = false;
      refresh();
    };
    svg.node().addEventListener("pointermove", move);
    svg.node().addEventListener("pointerup", up);
    svg.node().addEventListener("pointercancel", up);
  }

  // A click on a dot selects the stacks there; a click on empty sky clears the selection.
  function clickAt([mx, my]) {
    const hit = bins.find((bin) => {
      const [sx, sy] = transform.apply([bin.x, bin.y]);
      return Math.hypot(sx - mx, sy - my) < Math.max(9, screenRadius(bin) + 3);
    });
    if (hit) {
      const pad = 0.6 / W;     // a tiny box around the dot, in projected units
      const [x, y] = [hit.x / W, hit.y / W];
      region = [x - pad, y - pad, x + pad, y + pad];
    } else {
      region = null;
    }
    selectAllInWindow = false;
    refresh();
  }

  function drawBox() {
    if (!boxRect) return;
    let a, b;
    if (drawing) { a = drawing.start; b = drawing.end; }
    else if (region && !selectAllInWindow) {
      a = transform.apply([region[0] * W, region[1] * W]);
      b = transform.apply([region[2] * W, region[3] * W]);
      if (Math.abs(b[0] - a[0]) < 3) { boxRect.attr("visibility", "hidden"); return; }
    } else { boxRect.attr("visibility", "hidden"); return; }
    boxRect.attr("visibility", "visible")
      .attr("x", Math.min(a[0], b[0])).attr("y", Math.min(a[1], b[1]))
      .attr("width", Math.abs(b[0] - a[0])).attr("height", Math.abs(b[1] - a[1]));
  }

  // --- the selection panel ----------------------------------------------------------------------

  function drawSelection() {
    const list = $("sel-list"), summary = $("sel-summary"), button = $("download-all"), note = $("download-note");
    list.replaceChildren();
    $("select-clear").disabled = !selected.length && !region && !selectAllInWindow;
    if (!selected.length) {
      summary.textContent = region || selectAllInWindow ? "No stacks in the selection" + (windowRange ? " and time window." : ".")
        : "Drag a box on the map to select stacks, or click a dot.";
      button.disabled = true;
      button.textContent = "Download all";
      $("download-ids").value = "";
      return;
    }
    // Deep and crowd stacks sum chunk stacks' frames: only chunk stacks count towards the exposure,
    // or a deep stack and its chunks would count the same minutes twice.
    const bytes = d3.sum(selected, (s) => s.size);
    const exposure = d3.sum(selected.filter((s) => s.kind === "chunk"), (s) => s.exposure);
    const objects = new Set(selected.map((s) => s.object));
    summary.textContent = plural(selected.length, "stack") + " of " + plural(objects.size, "object") + " · " +
      hours(exposure) + " of exposure (chunk stacks; deep and crowd stacks re-use it) · " + mb(bytes);
    const sorted = [...selected].sort((a, b) => (b.date || 0) - (a.date || 0));
    for (const s of sorted.slice(0, 40)) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "/stacks/" + s.id;
      a.textContent = s.object;
      const meta = document.createElement("span");
      meta.className = "hint";
      meta.textContent = (s.date ? day(s.date) : "") + " · " + plural(s.frames, "frame") + " · " + s.kind + (s.owner ? " · " + s.owner : "");
      li.append(a, meta);
      list.appendChild(li);
    }
    if (sorted.length > 40) {
      const li = document.createElement("li");
      li.className = "hint";
      li.textContent = "and " + (sorted.length - 40) + " more";
      list.appendChild(li);
    }
    const tooMany = selected.length > MAX_DOWNLOAD;
    button.disabled = tooMany;
    button.textContent = "Download all " + plural(selected.length, "stack") + " · " + mb(bytes);
    note.textContent = tooMany ? "That is more than " + MAX_DOWNLOAD + " stacks: select a smaller region or time window."
      : "One ZIP of FITS files with an index.csv, streamed as it is made.";
    $("download-ids").value = selected.map((s) => s.id).join(",");
  }

  // --- the timeline ------------------------------------------------------------------------------

  let tl = null;

  function drawTimeline() {
    const box = $("timeline");
    box.textContent = "";
    const dated = stacks.filter((s) => s.date);
    const width = Math.max(280, box.clientWidth), height = 92, m = {l: 8, r: 8, t: 8, b: 22};
    const tsvg = d3.select(box).append("svg").attr("viewBox", "0 0 " + width + " " + height)
      .attr("width", width).attr("height", height).attr("class", "timeline-svg");
    if (!dated.length) {
      tsvg.append("text").attr("x", width / 2).attr("y", height / 2).attr("text-anchor", "middle")
        .attr("class", "empty-label").text("No dates yet");
      tl = null;
      return;
    }
    let [lo, hi] = d3.extent(dated, (s) => s.date);
    const span = hi - lo, padMs = Math.max(span * 0.04, 3 * 86400e3);
    lo = new Date(+lo - padMs); hi = new Date(+hi + padMs);
    const x = d3.scaleUtc().domain([lo, hi]).range([m.l, width - m.r]);
    const interval = (hi - lo) > 3 * 365 * 86400e3 ? d3.utcMonth : (hi - lo) > 120 * 86400e3 ? d3.utcWeek : d3.utcDay;
    const bin = d3.bin().value((s) => s.date).domain(x.domain()).thresholds(interval.range(interval.floor(lo), hi));
    const y = d3.scaleLinear().range([height - m.b, m.t]);
    tsvg.append("g").attr("class", "axis").attr("transform", "translate(0," + (height - m.b) + ")")
      .call(d3.axisBottom(x).ticks(Math.max(2, Math.floor(width / 110))).tickSizeOuter(0));
    const all = tsvg.append("g").attr("class", "tl-bars");
    const sel = tsvg.append("g").attr("class", "tl-bars selected");
    const brush = d3.brushX().extent([[m.l, m.t - 4], [width - m.r, height - m.b]])
      .on("brush end", (event) => {
        if (!event.sourceEvent && event.type === "brush") return;
        windowRange = event.selection ? event.selection.map(x.invert) : null;
        $("time-note").textContent = windowRange
          ? day(windowRange[0]) + " – " + day(windowRange[1]) + " · " + plural(stacks.filter(inWindow).length, "stack")
          : "All dates · " + plural(stacks.length, "stack") + " · drag across the timeline to choose a time window";
        refresh();
      });
    const gBrush = tsvg.append("g").attr("class", "brush").call(brush);
    tl = {x, y, bin, all, sel, height, m, brush, gBrush};
    $("time-note").textContent = "All dates · " + plural(stacks.length, "stack") + " · drag across the timeline to choose a time window";
    drawTimelineBars();
  }

  function drawTimelineBars() {
    if (!tl) return;
    const {x, y, bin, all, sel, height, m} = tl;
    const buckets = bin(stacks.filter((s) => s.date));
    const chosen = bin(selected.filter((s) => s.date));
    y.domain([0, d3.max(buckets, (b) => b.length) || 1]);
    const bars = (g, data) => g.selectAll("rect").data(data).join("rect")
      .attr("x", (b) => x(b.x0) + 0.5).attr("width", (b) => Math.max(1, x(b.x1) - x(b.x0) - 1))
      .attr("y", (b) => y(b.length)).attr("height", (b) => Math.max(0, height - m.b - y(b.length)))
      .attr("visibility", (b) => b.length ? "visible" : "hidden");
    bars(all, buckets);
    bars(sel, chosen);
  }

  // --- tools --------------------------------------------------------------------------------------

  function setMode(next) {
    mode = next;
    $("mode-select").setAttribute("aria-pressed", String(mode === "select"));
    $("mode-pan").setAttribute("aria-pressed", String(mode === "pan"));
    if (svg) svg.attr("class", "skymap mode-" + mode);
  }
  $("mode-select").addEventListener("click", () => setMode("select"));
  $("mode-pan").addEventListener("click", () => setMode("pan"));
  $("zoom-in").addEventListener("click", () => svg && svg.transition().duration(250).call(zoom.scaleBy, 2));
  $("zoom-out").addEventListener("click", () => svg && svg.transition().duration(250).call(zoom.scaleBy, 0.5));
  $("zoom-reset").addEventListener("click", () => svg && svg.transition().duration(300).call(zoom.transform, d3.zoomIdentity));
  $("select-window").addEventListener("click", () => { selectAllInWindow = true; region = null; refresh(); });
  $("select-clear").addEventListener("click", () => { selectAllInWindow = false; region = null; refresh(); });

  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (!stacks || Math.abs(holder.clientWidth - W) < 2) return;
      transform = d3.zoomIdentity;
      build();
      windowRange = null;
      drawTimeline();
      refresh();
    }, 200);
  });
})();
