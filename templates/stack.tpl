% rebase('base.tpl')
<h1>{{stack['object']}} <span class="tag">{{stack['kind']}}</span></h1>
<div class="stack">
  <a href="/stacks/{{stack['id']}}/preview.png"><img class="preview" src="/stacks/{{stack['id']}}/preview.png" alt="Preview of {{stack['object']}}"></a>
  <dl class="numbers">
    <dt>Chunk</dt><dd><code>{{stack['chunk_key']}}</code></dd>
    <dt>Owner</dt><dd>{{stack['owner']}}</dd>
    <dt>Telescope</dt><dd>{{stack['telescope']}}</dd>
    <dt>Frames used</dt><dd>{{stack['frames']}}</dd>
    <dt>Frames rejected</dt><dd>{{stack['frames_rejected']}}</dd>
    <dt>Total exposure</dt><dd>{{'%.0f' % stack['exposure_s']}} s</dd>
    <dt>Time span (UTC)</dt><dd>{{stack['date_beg']}} – {{stack['date_end']}}</dd>
    % if stack['fwhm_px']:
    <dt>Median FWHM</dt><dd>{{'%.2f' % stack['fwhm_px']}} px</dd>
    % end
    <dt>Download</dt><dd><a class="button" href="/stacks/{{stack['id']}}/stack.fits">FITS ({{'%.1f' % (stack['fits_size'] / 1e6)}} MB)</a></dd>
  </dl>
</div>
<h2>Frames</h2>
<table class="frames">
  <thead><tr><th>File</th><th>Used</th><th>Reason</th><th>Stars</th><th>FWHM (px)</th></tr></thead>
  <tbody>
  % for f in frames:
  <tr class="{{'used' if f['used'] else 'rejected'}}">
    <td>{{f['filename']}}</td><td>{{'yes' if f['used'] else 'no'}}</td><td>{{f['reason'] or ''}}</td>
    <td>{{f['stars'] if f['stars'] is not None else ''}}</td><td>{{'%.2f' % f['fwhm_px'] if f['fwhm_px'] else ''}}</td>
  </tr>
  % end
  </tbody>
</table>
