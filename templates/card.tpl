<a class="card" href="/stacks/{{s['id']}}" data-id="{{s['id']}}">
  <span class="thumb"><img src="/stacks/{{s['id']}}/thumb.jpg" alt="{{s['object']}}" loading="lazy" width="270" height="480"></span>
  <span class="title">{{s['object']}} <span class="tag {{s['kind']}}">{{s['kind']}}</span></span>
  % from lib.gallery import exposure_text, plural
  <span class="meta">{{(s['date_beg'] or '')[:10]}} · {{plural(s['frames'] or 0, 'frame')}}</span>
  <span class="meta owner">{{exposure_text(s['exposure_s'])}} · {{('by ' + s['owner']) if s.get('owner') else plural(s.get('owners') or 0, 'owner') if s['kind'] == 'crowd' else ''}}</span>
</a>
