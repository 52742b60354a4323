% rebase('base.tpl')
<section class="narrow panel">
<h1>{{status}}</h1>
<p class="error">{{message}}</p>
% if status == 404 and not user:
% from bottle import request
% from urllib.parse import quote
<p class="hint" id="login-hint">If this is one of your own stacks, it is private:
   <a href="/login?next={{quote(request.path, safe='/')}}">Log in</a> to see it.</p>
% end
<p><a href="/">Back to CrowdSky</a></p>
</section>
