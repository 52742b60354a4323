% from bottle import request
% here = request.path
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<meta name="color-scheme" content="dark">
<title>{{title}} · CrowdSky</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/crowdsky.css">
<script src="/static/site.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/"><img src="/static/favicon.svg" alt="" width="26" height="26"> CrowdSky</a>
  <nav aria-label="Main" class="main-nav">
    <a href="/targets" class="{{'here' if here.startswith('/targets') else ''}}">Targets</a>
    <a href="/stacks" class="{{'here' if here.startswith('/stacks') else ''}}">Stacks</a>
    <a href="/map" class="{{'here' if here == '/map' else ''}}">Sky map</a>
    <a href="/atlas" class="{{'here' if here == '/atlas' else ''}}">Atlas</a>
    % if user:
    <a href="/upload" class="{{'here' if here == '/upload' else ''}}">Upload</a>
    <a href="/status" class="{{'here' if here == '/status' else ''}}">Status</a>
    % end
  </nav>
  <div class="account-nav">
    % if user:
    <a href="/account" class="{{'here' if here == '/account' else ''}} who">{{user['username']}}</a>
    <form method="post" action="/logout" class="inline">
      <input type="hidden" name="csrf_token" value="{{csrf}}">
      <button type="submit" class="link">Log out</button>
    </form>
    % else:
    % from urllib.parse import quote
    % back = '' if here in ('/', '/login', '/register') else '?next=' + quote(here, safe='/')
    <a href="/login{{back}}" class="{{'here' if here == '/login' else ''}}">Log in</a>
    <a href="/register" class="button small">Create account</a>
    % end
  </div>
</header>
<main class="{{get('main_class', '')}}">
{{!base}}
</main>
<footer>
  <p>CrowdSky · raw Seestar frames in, colour stacks out · a storage place for owners and a shared archive for citizen science</p>
  <p><a href="/">About</a> · <a href="/stacks">Stacks</a> · <a href="/map">Sky map</a> · <a href="/api/v1/openapi.json">JSON API</a></p>
</footer>
</body>
</html>
