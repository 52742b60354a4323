% rebase('base.tpl')
<div class="page-head">
  <h1>Upload a night</h1>
  <p class="hint">Drop the raw sub-frames of one night: the <code>.fit</code> files in your Seestar's
     <code>&lt;target&gt;_sub</code> folders, or the whole folder. Each file is checked as it arrives; when every
     file is in, press <b>Finalize</b> and the frames are stacked.</p>
</div>
<div id="uploader" data-user="{{user['id']}}" data-max-bytes="{{max_frame_bytes}}">
  <div id="resume" class="notice resume" hidden>
    <p><b id="resume-count">0 files</b> already in from your unfinished batch: drop the folder again to continue.
       Files already uploaded are recognised and skipped. Or press <b>Finalize</b> to stack what is in.</p>
    <p class="hint" id="resume-detail"></p>
  </div>
  <div id="dropzone" class="dropzone" tabindex="0" role="button" aria-label="Drop files or a folder here, or press Enter to choose files">
    <svg class="drop-icon" viewBox="0 0 48 48" aria-hidden="true"><path d="M24 32V10m0 0-9 9m9-9 9 9" fill="none" stroke="currentColor" stroke-width="3" stroke-linecap="round" stroke-linejoin="round"/><path d="M8 30v8h32v-8" fill="none" stroke="currentColor" stroke-width="3" stroke-linecap="round" stroke-linejoin="round"/></svg>
    <p class="drop-title">Drag files or a whole folder here</p>
    <p class="drop-or">
      <label class="button small">Choose files<input id="picker" type="file" multiple accept=".fit,.fits,.fts" class="visually-hidden"></label>
      <label class="button small ghost">Choose a folder<input id="folder-picker" type="file" webkitdirectory multiple class="visually-hidden"></label>
    </p>
    <p class="hint">Raw Seestar frames, up to {{max_frame_bytes // (1024 * 1024)}} MB each. Other files in the folder (JPEG thumbnails, stacks) are ignored.</p>
  </div>
  <div class="batch" id="batch">
    <div class="batch-main">
      <div class="bar big" role="progressbar" aria-labelledby="batch-text" aria-valuemin="0" aria-valuemax="100" id="batch-progress"><div id="batch-bar" class="fill"></div></div>
      <p id="batch-text" class="batch-text">No files yet</p>
      <p id="batch-speed" class="hint batch-speed"></p>
    </div>
    <button id="finalize" type="button" disabled>Finalize</button>
  </div>
  <div id="result" class="notice" role="status" hidden></div>
  <div class="files-head" id="files-head" hidden>
    <span id="files-count"></span>
    <button type="button" class="small ghost" id="retry-failed" hidden>Retry failed files</button>
  </div>
  <ul id="files" class="files" aria-label="Files"></ul>
</div>
<script src="/static/upload.js" defer></script>
