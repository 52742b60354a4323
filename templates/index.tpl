% rebase('base.tpl', main_class='home')
% from lib.gallery import exposure_text
<section class="hero">
  <div class="hero-text">
    <p class="eyebrow">For ZWO Seestar S50, S30 and S30 Pro owners</p>
    <h1>Your Seestar nights, stacked and kept. Everybody's nights, stacked deeper.</h1>
    <p class="lead">Drop the raw sub-frames of a night into your browser. CrowdSky stacks them into
       colour images, keeps the results for you, and &mdash; only if you say so &mdash; adds them to a shared
       archive of the sky that anyone can browse and download for citizen science.</p>
    <p class="actions">
    % if user:
      <a class="button" href="/upload">Upload a night</a>
    % else:
      <a class="button" href="/register">Create a free account</a>
      <a class="button ghost" href="/login">Log in</a>
    % end
      <a href="/stacks">Browse stacks</a>
      <a href="/map">Open the sky map</a>
    </p>
  </div>
  % if recent:
  <a class="hero-image" href="/stacks/{{recent[0]['id']}}">
    <img src="/stacks/{{recent[0]['id']}}/thumb.jpg" alt="Latest shared stack: {{recent[0]['object']}}">
    <span>{{recent[0]['object']}} · {{recent[0]['frames']}} frames by {{recent[0]['owner']}}</span>
  </a>
  % else:
  <div class="hero-image empty" aria-hidden="true"><img src="/static/favicon.svg" alt=""></div>
  % end
</section>

% if numbers['stacks']:
<section class="numbers-strip" aria-label="The shared archive so far">
  <div><b>{{numbers['stacks']}}</b><span>shared stacks</span></div>
  <div><b>{{exposure_text(numbers['hours'] * 3600)}}</b><span>of exposure</span></div>
  <div><b>{{numbers['frames']}}</b><span>sub-frames stacked</span></div>
  <div><b>{{numbers['objects']}}</b><span>objects</span></div>
  <div><b>{{numbers['owners']}}</b><span>owners sharing</span></div>
</section>
% end

<section class="how">
  <h2>How it works</h2>
  <ol class="steps">
    <li><b>Shoot as usual.</b> Turn on <i>Save each frame</i> in the Seestar app. Every 10 s sub-frame lands
        in a <code>&lt;target&gt;_sub</code> folder on the telescope.</li>
    <li><b>Upload the folder.</b> Drag the folder (or pick the <code>.fit</code> files) onto the upload page.
        Hundreds of files go up a few at a time; a dropped connection or a reload resumes where it stopped,
        and files already sent are skipped.</li>
    <li><b>We stack it.</b> Frames are filed into chunks &mdash; one telescope, one 15-minute block, one patch
        of sky &mdash; then debayered, graded, aligned on the stars and combined. Trailed or cloudy frames are
        left out, and the stack page says why.</li>
    <li><b>Look, download, share.</b> Each stack gets a preview, its numbers and a quality chart per frame,
        and a FITS file you can take to Siril, PixInsight or your own scripts.</li>
  </ol>
</section>

<section class="two-col">
  <div class="panel">
    <h2>What happens to your data</h2>
    <ul class="ticks">
      <li><b>Your location is never published.</b> Seestar frames carry the observing site
          (<code>SITELAT</code>/<code>SITELONG</code>); it is removed from every stack and never shown to
          anyone. The map shows where the telescope <i>pointed</i> on the sky, not where you stood.</li>
      <li><b>Sharing is off until you turn it on.</b> Your stacks are yours alone by default. On your account
          page you can share them with everyone and let your frames join community stacks.</li>
      <li><b>Raw frames are not hoarded.</b> They wait in a buffer until they are stacked, then they are
          deleted. Uploads you never finish are removed after a day.</li>
      <li><b>You stay in control.</b> Download any stack as FITS, or delete it, whenever you like.</li>
    </ul>
  </div>
  <div class="panel">
    <h2>A resource for citizen science</h2>
    <p>Thousands of small telescopes point at the same galaxies, clusters and nebulae every clear night.
       Shared stacks are searchable by object, date and position on the sky, and every FITS keeps its
       timing and a table of the frames that went into it.</p>
    <p>That makes the archive useful beyond pretty pictures: following variable stars, spotting
       a supernova or a new comet early, or stacking many owners' frames of one object into
       <b>crowd stacks</b> deeper than any single Seestar could go.</p>
    <p><a href="/map">See what has been observed where &rarr;</a></p>
  </div>
</section>

% if recent:
<section>
  <div class="section-head"><h2>Recently shared</h2><a href="/stacks">All stacks &rarr;</a></div>
  <div class="grid">
  % for s in recent:
    % include('card.tpl', s=s)
  % end
  </div>
</section>
% end
