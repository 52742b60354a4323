% rebase('base.tpl')
<section class="narrow panel">
<h1>Log in</h1>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
% from urllib.parse import quote
<form method="post" action="/login?next={{quote(next, safe='/')}}" class="stacked">
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  <label>User name <input name="username" autocomplete="username" required autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <button type="submit">Log in</button>
</form>
<p>New here? <a href="/register">Create an account</a>.</p>
</section>
<script src="/static/login.js" defer></script>
