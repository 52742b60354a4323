% rebase('base.tpl')
% from urllib.parse import quote
% from lib.techcard import telescope_model as model
% total = len(frames) or ((stack['frames'] or 0) + (stack['frames_rejected'] or 0))
<div class="page-head stack-head">
  <div>
    <p class="eyebrow"><a href="/targets/{{quote(stack['object'])}}">{{stack['object']}}</a> · {{(stack['date_beg'] or '')[:10]}}</p>
    <h1>{{stack['object']}} <span class="tag {{stack['kind']}}">{{stack['kind']}}</span></h1>
    % if stack['kind'] == 'crowd':
    <p class="hint">a community stack · {{g.plural(stack['owners'] or len(group['credits']), 'owner')}} · {{g.plural(stack['nights'] or 0, 'night')}}</p>
    % elif stack['kind'] == 'deep':
    <p class="hint">by {{stack['owner']}} · {{g.plural(stack['nights'] or 0, 'night')}} of one target</p>
    % else:
    <p class="hint">by {{stack['owner']}} · {{g.time_span(stack)}}</p>
    % end
  </div>
  <div class="actions">
    <a class="button" id="download-fits" href="/stacks/{{stack['id']}}/stack.fits" download>Download FITS · {{'%.1f' % ((stack['fits_size'] or 0) / 1e6)}} MB</a>
    <a class="button ghost" id="download-jpeg" href="/stacks/{{stack['id']}}/picture.jpg" data-as-shown="/stacks/{{stack['id']}}/picture.jpg" download>JPEG as shown</a>
    <a class="button ghost" id="download-tiff" href="/stacks/{{stack['id']}}/picture.tiff" data-as-shown="/stacks/{{stack['id']}}/picture.tiff" download>16-bit TIFF as shown</a>
    % if user and stack['owner_id'] == user['id'] and stack['kind'] in ('chunk', 'deep'):
    <form method="post" action="/stacks/{{stack['id']}}/delete" class="inline" id="delete-stack"
          data-confirm="{{'Delete this chunk stack with its job and raw frames? It leaves your deep stack and any crowd stack, which are rebuilt without it. This cannot be undone.' if stack['kind'] == 'chunk' else 'Delete this deep stack? Its chunk stacks stay. This cannot be undone.'}}">
      <input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="danger">Delete</button></form>
    % end
  </div>
</div>

<div class="stack">
  <figure class="viewer" id="viewer">
    <div class="viewport" id="viewport" tabindex="0" aria-label="Preview; click to zoom, drag to pan">
      <div class="picture" id="picture">
        <img class="preview" id="preview" src="/stacks/{{stack['id']}}/preview.png" alt="Preview of {{stack['object']}}" draggable="false">
        <canvas id="stretch-canvas" hidden></canvas>
      </div>
    </div>
    <div class="viewer-tools">
      <button type="button" class="small ghost" data-zoom="in" aria-label="Zoom in">+</button>
      <button type="button" class="small ghost" data-zoom="out" aria-label="Zoom out">&minus;</button>
      <button type="button" class="small ghost" data-zoom="fit">Fit</button>
      <span class="hint" id="zoom-level">100 %</span>
      <a class="hint" href="/stacks/{{stack['id']}}/preview.png" target="_blank" rel="noopener">full-size PNG</a>
    </div>
    % # the sliders start at the preview's own stretch (numbers from the FITS header); without it, stack.js asks
    <div class="stretch" id="stretch" data-stack="{{stack['id']}}" {{!('data-black="%.1f" data-strength="%.3f"' % (stretch['black'], stretch['strength'])) if stretch else 'hidden'}}>
      <label for="stretch-black">Black point</label>
      <input type="range" id="stretch-black" min="-2" max="12" step="0.1" value="2.8">
      <output id="stretch-black-value" for="stretch-black"></output>
      <label for="stretch-strength">Strength</label>
      <input type="range" id="stretch-strength" min="0" max="100" step="0.5" value="60">
      <output id="stretch-strength-value" for="stretch-strength"></output>
      <button type="button" class="small ghost" id="stretch-reset">Reset</button>
    </div>
    <figcaption class="hint">Click to zoom in, drag to move around, double-click or <b>Fit</b> to see it whole.
      Black point: sky sigmas below the sky (lower shows more faint noise); strength: how hard the faint end is lifted.
      The downloads use what you set here.</figcaption>
  </figure>

  <aside class="panel numbers-panel">
    <h2>The numbers</h2>
    <dl class="numbers">
      % if group:
      <dt>Frames</dt><dd><b>{{stack['frames']}}</b> in {{len(group['chunks'])}} chunk stacks</dd>
      <dt>Nights</dt><dd>{{stack['nights'] or '–'}}</dd>
      <dt>Owners</dt><dd>{{stack['owners'] or len(group['credits'])}}</dd>
      % else:
      <dt>Frames used</dt><dd><b>{{stack['frames']}}</b> of {{total}}</dd>
      <dt>Frames rejected</dt><dd>{{stack['frames_rejected']}}
      % if rejections:
        <ul class="reasons">
        % for reason, count in rejections:
          <li><span class="count">{{count}}&times;</span> {{reason}}</li>
        % end
        </ul>
      % end
      </dd>
      % end
      <dt>Total exposure</dt><dd>{{g.exposure_text(stack['exposure_s'])}}
        % if (stack['exposure_s'] or 0) >= 120:
        <span class="hint">({{'%.0f' % stack['exposure_s']}} s)</span>
        % end
      </dd>
      <dt>Time span</dt><dd>{{g.time_span(stack)}}</dd>
      <dt>Median FWHM</dt><dd>{{'%.2f px' % stack['fwhm_px'] if stack['fwhm_px'] else '–'}}</dd>
      <dt>Background noise</dt><dd>{{'%.3g' % stack['noise'] if stack['noise'] else 'not measured'}}
        % if stack['noise']:
        <span class="hint">(sky σ, linear units)</span>
        % end
      </dd>
      <dt>Pointing</dt><dd>RA {{g.ra_text(stack['ra'])}}<br>Dec {{g.dec_text(stack['dec'])}}
        % if stack['ra'] is not None and stack['dec'] is not None:
        <br><a id="atlas-link" href="/atlas?target={{quote('%.5f %+.5f' % (stack['ra'], stack['dec']))}}">See this sky in the crowd atlas</a>
        % end
      </dd>
      % if group:
      <dt>Telescopes</dt><dd>{{stack['telescope'] or '–'}}</dd>
      <dt>Cameras</dt><dd>{{stack.get('instrument') or '–'}}</dd>
      % elif not card:
      <dt>Telescope</dt><dd>{{model(stack['telescope'], None)}}</dd>
      % end
    </dl>
    % if card:
    <h2 class="card-head">Technical card</h2>
    <dl class="technical" id="technical-card">
      % for label, text in card:
      <dt>{{label}}</dt><dd>{{text}}</dd>
      % end
    </dl>
    % end
  </aside>
</div>

% if group:
<section class="panel quality">
  <h2>Who and what went into it</h2>
  <div class="table-scroll">
  <table class="credits">
    <thead><tr><th>Owner</th><th>Chunks</th><th>Frames</th><th>Exposure</th></tr></thead>
    <tbody>
    % for c in group['credits']:
    <tr><td>{{c['owner']}}</td><td>{{c['chunks']}}</td><td>{{c['frames']}}</td><td>{{g.exposure_text(c['exposure_s'])}}</td></tr>
    % end
    </tbody>
  </table>
  </div>
  <h3>Chunk stacks</h3>
  <ul class="chunk-list">
  % for c in group['chunks']:
    <li><a href="/stacks/{{c['id']}}">{{(c['date_beg'] or '')[:16].replace('T', ' ')}} UTC</a>
        <span class="hint">{{c['frames']}} frames · {{g.exposure_text(c['exposure_s'])}} · {{model(c['telescope'], None)}} · {{c['owner']}}</span></li>
  % end
  </ul>
</section>
% end
% if frames:
<section class="panel quality">
  <div class="section-head">
    <h2>Frame quality</h2>
    <p class="legend"><span class="key used"></span> used <span class="key rejected"></span> rejected</p>
  </div>
  <div id="quality-chart" class="chart" data-stack="{{stack['id']}}">
    <p class="hint">Loading the per-frame numbers…</p>
  </div>
  <p class="hint">Star size (FWHM, smaller is sharper) and the number of stars found in each frame, in the order
     they were taken. Clouds, dew and trailing show up as dips in stars and jumps in FWHM.</p>
</section>
% end

% if frames:
<details class="panel frames-details" {{'open' if total <= 20 else ''}}>
  <summary>All {{total}} frames</summary>
  <div class="table-scroll">
  <table class="frames">
    <thead><tr><th>#</th><th>Taken (UTC)</th><th>File</th><th>Used</th><th>Stars</th><th>FWHM (px)</th><th>Reason</th></tr></thead>
    <tbody>
    % for i, f in enumerate(frames, 1):
    <tr class="{{'used' if f['used'] else 'rejected'}}">
      <td>{{i}}</td><td class="taken">{{(f['date_obs'] or '')[:19].replace('T', ' ')}}</td><td class="file">{{f['filename']}}</td><td>{{'yes' if f['used'] else 'no'}}</td>
      <td data-unit="stars">{{f['stars'] if f['stars'] is not None else ''}}</td><td data-unit="px">{{'%.2f' % f['fwhm_px'] if f['fwhm_px'] else ''}}</td>
      <td>{{f['reason'] or ''}}</td>
    </tr>
    % end
    </tbody>
  </table>
  </div>
</details>
% end
<script src="/static/zoom.js" defer></script>
<script src="/static/stack.js" defer></script>
<link rel="stylesheet" href="/static/sky-overlay.css">
<script src="/static/sky-overlay.js" defer></script>
