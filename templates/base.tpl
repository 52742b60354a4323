<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<title>{{title}} · CrowdSky</title>
<link rel="stylesheet" href="/static/crowdsky.css">
</head>
<body>
<header class="top">
  <a class="brand" href="/">CrowdSky</a>
  <nav>
    <a href="/stacks">Stacks</a>
    % if user:
    <a href="/upload">Upload</a>
    <a href="/status">Status</a>
    <a href="/account">{{user['username']}}</a>
    <form method="post" action="/logout" class="inline">
      <input type="hidden" name="csrf_token" value="{{csrf}}">
      <button type="submit" class="link">Log out</button>
    </form>
    % else:
    <a href="/login">Log in</a>
    <a href="/register" class="button small">Create account</a>
    % end
  </nav>
</header>
<main>
{{!base}}
</main>
<footer>CrowdSky · stacks of the sky by Seestar owners, for everyone</footer>
</body>
</html>
