% rebase('base.tpl')
<h1>Stacks</h1>
<form method="get" action="/stacks" class="filters">
  <label>Object
    <select name="object">
      <option value="">all objects</option>
      % for name in objects:
      <option value="{{name}}" {{'selected' if name == object_name else ''}}>{{name}}</option>
      % end
    </select>
  </label>
  <button type="submit" class="small">Filter</button>
</form>
% if not stacks:
<p>No stacks to show yet.</p>
% end
<div class="grid">
% for s in stacks:
  % include('card.tpl', s=s)
% end
</div>
