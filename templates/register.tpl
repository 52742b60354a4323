% rebase('base.tpl')
<section class="narrow panel">
<h1>Create an account</h1>
% if error:
<p class="error" role="alert">{{error}}</p>
% end
<form method="post" action="/register" class="stacked">
  <input type="hidden" name="csrf_token" value="{{csrf}}">
  <label>User name <input name="username" value="{{username}}" autocomplete="username" required minlength="3" maxlength="32"></label>
  <label>Password <input name="password" type="password" autocomplete="new-password" required minlength="8"></label>
  <button type="submit">Create account</button>
</form>
<p>Already have one? <a href="/login">Log in</a>.</p>
</section>
