% rebase('base.tpl')
<section class="narrow panel">
<h1>{{status}}</h1>
<p class="error">{{message}}</p>
<p><a href="/">Back to CrowdSky</a></p>
</section>
