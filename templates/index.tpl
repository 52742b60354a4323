% rebase('base.tpl')
<section class="hero">
  <h1>Your Seestar nights, stacked. Everybody's nights, stacked deeper.</h1>
  <p>Drag the raw sub-frames your ZWO Seestar (S50, S30, S30 Pro) took tonight into your browser.
     CrowdSky files them into chunks (one telescope, one 15-minute block, one patch of sky),
     registers and stacks each chunk into a colour image, keeps the result for you and lets you
     download the FITS. Owners who share their data build community stacks deeper than any one
     telescope could: a storage place for Seestar owners and a resource for citizen science.</p>
  <p class="actions">
  % if user:
    <a class="button" href="/upload">Upload frames</a>
  % else:
    <a class="button" href="/register">Create an account</a> <a href="/login">or log in</a>
  % end
    <a href="/stacks">Browse stacks</a>
  </p>
</section>
% if recent:
<h2>Recently stacked</h2>
<div class="grid">
% for s in recent:
  % include('card.tpl', s=s)
% end
</div>
% end
