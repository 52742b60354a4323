% rebase('base.tpl')
<h1>Upload frames</h1>
<p>Drop the raw sub-frames of one night (<code>.fit</code> files from your Seestar's <code>&lt;target&gt;_sub</code>
   folders). Each file is checked as it arrives; when every file is in, press <b>Finalize</b> to stack.</p>
<div id="dropzone" class="dropzone" tabindex="0">
  <p><b>Drag files or a folder here</b> or
    <label class="button small">choose files<input id="picker" type="file" multiple accept=".fit,.fits,.fts" hidden></label>
  </p>
  <p class="hint">Up to {{max_frame_bytes // (1024 * 1024)}} MB a file.</p>
</div>
<div class="batch">
  <div class="bar"><div id="batch-bar" class="fill"></div></div>
  <span id="batch-text">No files yet</span>
  <button id="finalize" type="button" disabled>Finalize</button>
</div>
<p id="result" class="notice" hidden></p>
<ul id="files" class="files"></ul>
<script src="/static/upload.js" defer></script>
