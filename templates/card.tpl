<a class="card" href="/stacks/{{s['id']}}">
  <img src="/stacks/{{s['id']}}/preview.png" alt="Preview of {{s['object']}}" loading="lazy">
  <span class="title">{{s['object']}}</span>
  <span class="meta">{{s['date_beg'][:10]}} · {{s['frames']}} frames · {{'%.0f' % s['exposure_s']}} s · {{s['kind']}}</span>
</a>
