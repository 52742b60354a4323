// The crowd atlas page: Aladin Lite (static/vendor/aladin-lite, shipped with the app) showing our own
// HiPS survey (/hips/crowd), the crowd stacks' outlines (click: the stack page) and a name search
// through /api/v1/resolve.
import A from "/static/vendor/aladin-lite/aladin.js";

const view = document.getElementById("aladin");
const note = document.getElementById("atlas-note");
const form = document.getElementById("atlas-search");
const input = document.getElementById("atlas-name");

async function resolve(name) {
  const position = name.match(/^\s*(\d+(?:\.\d+)?)[\s,]+([+-]?\d+(?:\.\d+)?)\s*$/);   // "ra dec" in degrees
  if (position) return { name: name.trim(), ra: Number(position[1]), dec: Number(position[2]) };
  const response = await fetch("/api/v1/resolve?name=" + encodeURIComponent(name));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `cannot find ${name}`);
  return body;
}

async function main() {
  await A.init;
  const survey = new URL(view.dataset.survey, window.location.href).href;
  const aladin = A.aladin(view, {
    survey: survey, hipsList: [], fov: 1.5, target: "192.7212 41.1197", cooFrame: "ICRS",
    showLayersControl: false, showSettingsControl: false, showShareControl: false,
    showSimbadPointerControl: false, showCooGridControl: true, showContextMenu: false,
    showFrame: true, showFullscreenControl: true, showProjectionControl: false, showReticle: false,
  });
  window.crowdAtlas = aladin;        // for the page's tests and curious visitors
  const outlines = A.graphicOverlay({ color: "#7fd1ff", lineWidth: 1.5, name: "crowd stacks" });
  aladin.addOverlay(outlines);
  aladin.on("objectClicked", (object) => {
    const id = object && object.data && object.data.stackId;
    if (id) window.location.href = `/stacks/${id}`;
  });
  fetch("/api/v1/atlas/footprints").then((r) => r.json()).then((body) => {
    for (const stack of body.stacks || []) {
      const shape = A.polygon(stack.footprint, { color: "#7fd1ff", hoverColor: "#ffd27f" });
      shape.data = { stackId: stack.id, name: stack.object };
      outlines.add(shape);
    }
    view.dataset.footprints = String((body.stacks || []).length);
  });
  async function go(name) {
    if (!name.trim()) return;
    note.textContent = "";
    try {
      const found = await resolve(name);
      aladin.gotoRaDec(found.ra, found.dec);
      note.textContent = `${found.name}: RA ${found.ra.toFixed(4)}°, Dec ${found.dec.toFixed(4)}°`;
      const url = new URL(window.location.href);
      url.searchParams.set("target", name);
      history.replaceState(null, "", url);
    } catch (err) {
      note.textContent = err.message;
    }
  }
  // the region download follows the view: its centre and field, at most 2° a side (the server's limit)
  const region = document.getElementById("atlas-region");
  function regionLink() {
    const [ra, dec] = aladin.getRaDec();
    const [fovX, fovY] = aladin.getFov();
    const width = Math.min(2, fovX), height = Math.min(2, fovY);
    region.href = `/atlas/region.fits?ra=${((ra % 360) + 360) % 360}&dec=${dec}&width=${width}&height=${height}`;
  }
  aladin.on("positionChanged", regionLink);
  aladin.on("zoomChanged", regionLink);
  regionLink();
  form.addEventListener("submit", (event) => { event.preventDefault(); go(input.value); });
  if (view.dataset.target) await go(view.dataset.target);
  view.dataset.ready = "1";
}

main().catch((err) => { note.textContent = `The atlas cannot be shown: ${err}`; });
