% rebase('base.tpl')
<div class="page-head">
  <h1>Stacks</h1>
  <p class="hint">{{'Your own stacks and those shared with everyone.' if user else 'Stacks shared with everyone. Log in to see your own too.'}}
     <a href="/map">Find them on the sky map &rarr;</a></p>
</div>
<form method="get" action="/stacks" class="filters" id="filters">
  <label>Object
    <select name="object">
      <option value="">all objects</option>
      % for name in objects:
      <option value="{{name}}" {{'selected' if name == filters.object else ''}}>{{name}}</option>
      % end
      % if filters.object and filters.object not in objects:
      <option value="{{filters.object}}" selected>{{filters.object}}</option>
      % end
    </select>
  </label>
  <label>Kind
    <select name="kind">
      <option value="">all kinds</option>
      % for kind, label in (('chunk', 'chunk (one session)'), ('deep', 'deep (one owner, many nights)'), ('crowd', 'crowd (many owners)')):
      <option value="{{kind}}" {{'selected' if kind == filters.kind else ''}}>{{label}}</option>
      % end
    </select>
  </label>
  <label>Owner
    <input name="owner" list="owner-names" value="{{filters.owner or ''}}" placeholder="anyone" autocomplete="off">
    <datalist id="owner-names">
      % for name in owners:
      <option value="{{name}}"></option>
      % end
    </datalist>
  </label>
  <label>From <input type="date" name="from" value="{{filters.date_from.isoformat() if filters.date_from else ''}}"></label>
  <label>To <input type="date" name="to" value="{{filters.date_to.isoformat() if filters.date_to else ''}}"></label>
  <div class="filter-buttons">
    <button type="submit">Filter</button>
    % if filters.active:
    <a href="/stacks" class="button ghost">Clear</a>
    % end
  </div>
</form>
% for problem in filters.errors:
<p class="error" role="alert">{{problem}}</p>
% end
% if not listing.stacks:
<div class="empty-state">
  % if filters.active:
  <p>No stacks match these filters. <a href="/stacks">Show all stacks</a>.</p>
  % else:
  <p>No stacks to show yet.</p>
  % if user:
  <p><a class="button" href="/upload">Upload your first night</a></p>
  % end
  % end
</div>
% end
<div class="grid" id="gallery">
% for s in listing.stacks:
  % include('card.tpl', s=s)
% end
</div>
% if listing.newer or listing.older:
<nav class="pager" aria-label="Pages">
  % if listing.newer:
  <a class="button ghost" rel="prev" href="{{filters.url(after=listing.newer)}}">&larr; Newer</a>
  % else:
  <span></span>
  % end
  % if listing.older:
  <a class="button ghost" rel="next" href="{{filters.url(before=listing.older)}}">Older &rarr;</a>
  % end
</nav>
% end
