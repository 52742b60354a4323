// Stack page: a zoomable, pannable preview. Click zooms in where you click, drag moves, the wheel
// or a pinch zooms, double-click (or "Fit") shows the whole picture; + / - / 0 and the arrow keys
// work when the picture has focus.
"use strict";
(function () {
  const viewport = document.getElementById("viewport");
  const img = document.getElementById("preview");
  if (!viewport || !img) return;
  const layer = img.closest(".picture") || img;  // moved as one: the preview and the stretch canvas over it
  const level = document.getElementById("zoom-level");
  let s = 1, x = 0, y = 0;                   // scale and translation of the picture, in CSS pixels
  const pointers = new Map();
  let drag = null, pinch = null, clickTimer = null;

  function box() {
    const v = viewport.getBoundingClientRect(), i = img.getBoundingClientRect();
    // the picture's untransformed place in the viewport
    return {W: v.width, H: v.height, ox: i.left - v.left - x, oy: i.top - v.top - y, w: i.width / s, h: i.height / s, v};
  }

  function maxScale() {
    const b = box();
    return Math.max(4, 4 * (img.naturalWidth || b.w) / b.w);
  }

  function clamp() {
    const b = box();
    const fit = (size, room, offset, t) => size * s <= room ? (room - size * s) / 2 - offset
      : Math.min(-offset, Math.max(room - size * s - offset, t));
    x = fit(b.w, b.W, b.ox, x);
    y = fit(b.h, b.H, b.oy, y);
  }

  function draw() {
    clamp();
    layer.style.transform = s === 1 && x === 0 && y === 0 ? "" : "translate(" + x + "px, " + y + "px) scale(" + s + ")";
    viewport.classList.toggle("zoomed", s > 1.001);
    if (level && img.naturalWidth) {
      const b = box();
      level.textContent = Math.round(100 * s * b.w / img.naturalWidth) + " %";
    }
  }

  // Zoom to scale *next* keeping the picture point under viewport point (px, py) in place.
  function zoomAt(next, px, py) {
    const b = box();
    next = Math.max(1, Math.min(maxScale(), next));
    const ix = (px - b.ox - x) / s, iy = (py - b.oy - y) / s;     // picture point, unscaled
    s = next;
    x = px - b.ox - ix * s;
    y = py - b.oy - iy * s;
    draw();
  }

  function fit() { s = 1; x = 0; y = 0; draw(); }

  function local(e) {
    const v = viewport.getBoundingClientRect();
    return [e.clientX - v.left, e.clientY - v.top];
  }

  function centre() { const b = box(); return [b.W / 2, b.H / 2]; }

  viewport.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    viewport.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, local(e));
    if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      pinch = {d: Math.hypot(a[0] - b[0], a[1] - b[1]), s};
      drag = null;
    } else {
      drag = {start: local(e), x, y, moved: false};
    }
  });

  viewport.addEventListener("pointermove", (e) => {
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, local(e));
    if (pinch && pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const d = Math.hypot(a[0] - b[0], a[1] - b[1]);
      zoomAt(pinch.s * d / pinch.d, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
      return;
    }
    if (!drag) return;
    const [px, py] = local(e);
    const dx = px - drag.start[0], dy = py - drag.start[1];
    if (!drag.moved && Math.hypot(dx, dy) < 5) return;
    drag.moved = true;
    viewport.classList.add("dragging");
    x = drag.x + dx; y = drag.y + dy;
    draw();
  });

  function end(e) {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    viewport.classList.remove("dragging");
    if (pinch) { if (pointers.size < 2) pinch = null; drag = null; return; }
    if (drag && !drag.moved && e.type === "pointerup") {
      const [px, py] = local(e);
      if (clickTimer) { clearTimeout(clickTimer); clickTimer = null; fit(); }
      else clickTimer = setTimeout(() => { clickTimer = null; zoomAt(s >= maxScale() - 0.01 ? 1 : s * 2, px, py); }, 230);
    }
    drag = null;
  }
  viewport.addEventListener("pointerup", end);
  viewport.addEventListener("pointercancel", end);

  viewport.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [px, py] = local(e);
    zoomAt(s * Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), px, py);
  }, {passive: false});

  viewport.addEventListener("keydown", (e) => {
    const step = 60;
    if (e.key === "+" || e.key === "=") zoomAt(s * 1.5, ...centre());
    else if (e.key === "-") zoomAt(s / 1.5, ...centre());
    else if (e.key === "0") fit();
    else if (e.key === "ArrowLeft") { x += step; draw(); }
    else if (e.key === "ArrowRight") { x -= step; draw(); }
    else if (e.key === "ArrowUp") { y += step; draw(); }
    else if (e.key === "ArrowDown") { y -= step; draw(); }
    else return;
    e.preventDefault();
  });

  for (const button of document.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => {
      const what = button.dataset.zoom;
      if (what === "fit") fit();
      else zoomAt(what === "in" ? s * 1.6 : s / 1.6, ...centre());
    });
  }

  window.addEventListener("resize", draw);
  if (img.complete) draw(); else img.addEventListener("load", draw);
})();
