% rebase('base.tpl')
% from urllib.parse import quote
% from lib.techcard import telescope_model as model
<div class="page-head">
  <p class="eyebrow"><a href="/targets">Targets</a></p>
  <h1>{{t['object']}}</h1>
  <p class="hint" id="target-total">{{g.exposure_text(t['exposure_s'])}} of exposure · {{g.plural(t['frames'] or 0, 'frame')}} ·
     {{g.plural(t['nights'], 'night')}} · {{(t['first'] or '')[:10]}} – {{(t['last'] or '')[:10]}}</p>
</div>
% if t['deep'] or t['crowd']:
<section class="panel target-section" id="target-groups">
  <h2>Stacked over many nights</h2>
  <div class="grid">
  % for s in t['deep'] + t['crowd']:
    <a class="card" href="/stacks/{{s['id']}}" data-id="{{s['id']}}" data-kind="{{s['kind']}}">
      <span class="thumb"><img src="/stacks/{{s['id']}}/thumb.jpg" alt="{{s['object']}}" loading="lazy" width="270" height="480"></span>
      <span class="title">{{'Deep stack' if s['kind'] == 'deep' else 'Crowd stack'}} <span class="tag {{s['kind']}}">{{s['kind']}}</span></span>
      <span class="meta">{{g.exposure_text(s['exposure_s'])}} · {{g.plural(s['nights'] or 0, 'night')}}</span>
      <span class="meta owner">{{('by ' + s['owner']) if s.get('owner') else g.plural(s.get('owners') or 0, 'owner')}}</span>
    </a>
  % end
  </div>
</section>
% end
<section class="panel target-section" id="target-nights">
  <h2>Night by night</h2>
  % if not t['by_night']:
  <p class="hint">No single-night stacks to show.</p>
  % end
  % for night, chunks in t['by_night']:
  <h3 class="night">Night of {{night.strftime('%A %-d %B %Y') if night else 'unknown date'}}</h3>
  <div class="grid">
    % for s in chunks:
    <a class="card" href="/stacks/{{s['id']}}" data-id="{{s['id']}}" data-kind="chunk">
      <span class="thumb"><img src="/stacks/{{s['id']}}/thumb.jpg" alt="{{s['object']}}" loading="lazy" width="270" height="480"></span>
      <span class="title">{{g.when_text(s)}}</span>
      <span class="meta">{{g.plural(s['frames'] or 0, 'frame')}} · {{g.exposure_text(s['exposure_s'])}}</span>
      <span class="meta owner">{{model(s['telescope'], None) or ''}} · by {{s['owner']}}</span>
    </a>
    % end
  </div>
  % end
</section>
