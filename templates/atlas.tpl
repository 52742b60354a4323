% rebase('base.tpl', main_class='wide')
<div class="page-head">
  <h1>Crowd atlas</h1>
  <p class="hint">Every shared crowd stack as one zoomable sky (a HiPS survey, also at
     <a href="/hips/crowd/properties">/hips/crowd</a> for Aladin Desktop and other viewers).
     Outlines are the crowd stacks: click one to open it.</p>
</div>
<div class="atlas-layout panel">
  <form class="atlas-search" id="atlas-search" role="search">
    <label for="atlas-name">Go to</label>
    <input id="atlas-name" name="target" value="{{target}}" placeholder="M 94, NGC 4736, …" maxlength="64" autocomplete="off">
    <button type="submit" class="small">Go</button>
    <span class="hint" id="atlas-note" role="status" aria-live="polite"></span>
    <a class="button ghost small" id="atlas-region" href="#" download>Download this view as FITS</a>
  </form>
  <p class="hint">The download is the crowd data under the view (at most 2° × 2°, zoom in for a smaller
     area), reprojected and co-added on one north-up grid, with a coverage plane.</p>
  <div id="aladin" class="atlas-view" data-target="{{target}}" data-survey="/hips/crowd"></div>
</div>
<script type="module" src="/static/atlas.js"></script>
