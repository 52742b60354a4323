% rebase('base.tpl')
% from urllib.parse import quote
<div class="page-head">
  <h1>Targets</h1>
  <p class="hint">One card per object: the time spent on it over all its stacks and nights.
     {{'Your own stacks and those shared with everyone.' if user else 'Stacks shared with everyone. Log in to see your own too.'}}
     <a href="/stacks">Every stack &rarr;</a></p>
</div>
% if not listing:
<div class="empty-state"><p>No stacks to show yet.</p></div>
% end
<div class="grid" id="targets">
% for t in listing:
  <a class="card target" href="/targets/{{quote(t['object'])}}" data-object="{{t['object']}}">
    <span class="thumb"><img src="/stacks/{{t['cover']['id']}}/thumb.jpg" alt="{{t['object']}}" loading="lazy" width="270" height="480"></span>
    <span class="title">{{t['object']}}</span>
    <span class="meta integration">{{g.exposure_text(t['exposure_s'])}} in {{g.plural(t['nights'], 'night')}}</span>
    <span class="meta owner">{{g.plural(t['stacks'], 'stack')}} · last {{(t['last'] or '')[:10]}}</span>
  </a>
% end
</div>
