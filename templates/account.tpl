% rebase('base.tpl')
<section class="narrow panel">
<h1>{{user['username']}}</h1>
% from bottle import request
% if request.query.get('saved'):
<p class="saved" role="status">Saved: your stacks are {{'shared with everyone' if user['share_with_crowd'] else 'private to you'}}.</p>
% end
<form method="post" action="/account" class="stacked">
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  <label class="check"><input type="checkbox" name="share_with_crowd" {{'checked' if user['share_with_crowd'] else ''}}>
    <span>Share my stacks with everyone and let my frames join community stacks</span></label>
  <p class="hint">Off until you turn it on. Shared stacks appear in the gallery and on the sky map for everyone,
     with your user name. Your site's location (SITELAT/SITELONG) is removed from every stack and never shown
     to anyone, shared or not.</p>
  <button type="submit">Save</button>
</form>
</section>
