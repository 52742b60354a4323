% rebase('base.tpl', main_class='wide')
<div class="page-head">
  <h1>Sky map</h1>
  <p class="hint">{{'Your stacks and those shared with everyone' if user else 'Stacks shared with everyone'}}, where the
     telescopes pointed (never where they stood). Drag a box to select stacks, scroll or pinch to zoom,
     brush the timeline to pick a time window. The shared data as one zoomable picture:
     the <a href="/atlas" id="atlas-link">crowd atlas</a>.</p>
</div>
<div class="map-layout">
  <div class="map-main panel">
    <div class="map-tools" role="toolbar" aria-label="Map tools">
      <div class="segmented" role="group" aria-label="Mouse does">
        <button type="button" class="small" id="mode-select" aria-pressed="true">Select box</button>
        <button type="button" class="small" id="mode-pan" aria-pressed="false">Pan</button>
      </div>
      <button type="button" class="small ghost" id="zoom-in" aria-label="Zoom in">+</button>
      <button type="button" class="small ghost" id="zoom-out" aria-label="Zoom out">&minus;</button>
      <button type="button" class="small ghost" id="zoom-reset">Whole sky</button>
      <span class="hint" id="cursor-coords" aria-live="off"></span>
    </div>
    <div class="sky" id="sky" data-csrf="{{csrf}}">
      <p class="hint loading">Loading the map…</p>
    </div>
    <div class="tooltip" id="sky-tip" role="status" hidden></div>
    <div class="timeline" id="timeline" aria-label="Timeline: drag to choose a time window"></div>
    <p class="hint timeline-note" id="time-note">All dates</p>
  </div>
  <aside class="map-side panel" id="selection" aria-live="polite">
    <h2>Selection</h2>
    <p id="sel-summary" class="sel-summary">Drag a box on the map to select stacks.</p>
    <ul id="sel-list" class="sel-list"></ul>
    <form method="post" action="/stacks.zip" id="download-form" class="download-form">
      <input type="hidden" name="csrf_token" value="{{csrf}}">
      <input type="hidden" name="ids" id="download-ids" value="">
      <button type="submit" id="download-all" disabled>Download all</button>
      <p class="hint" id="download-note">One ZIP of FITS files with an index.csv; at most 1000 stacks at a time.</p>
    </form>
    <p class="side-actions">
      <button type="button" class="small ghost" id="select-window">Select everything in the time window</button>
      <button type="button" class="small ghost" id="select-clear" disabled>Clear selection</button>
    </p>
  </aside>
</div>
<script src="/static/vendor/d3-custom.min.js" defer></script>
<script src="/static/skymap.js" defer></script>
