% rebase('base.tpl')
% import datetime
% from lib.gallery import block_text
% from lib.techcard import telescope_model as model
% def when(t):
%   return datetime.datetime.fromtimestamp(t or 0, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
% end
% def job_actions(job):
  % if job['stack_id']:
  <a class="button small" href="/stacks/{{job['stack_id']}}">View stack</a>
  % end
  % if job['status'] == 'failed':
  <form method="post" action="/jobs/{{job['id']}}/retry" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="small">Retry</button></form>
  % end
  % if job['status'] != 'running':
  <form method="post" action="/jobs/{{job['id']}}/delete" class="inline" data-confirm="Delete this job, its raw frames and its stack? This cannot be undone."><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form>
  % end
% end
<div class="page-head">
  <h1>Your uploads</h1>
  <p class="hint">Each batch you finalize is split into chunks (one telescope, one 15-minute block, one patch of sky);
     each chunk becomes one stack. This page follows them live.</p>
</div>
<div id="status-root" data-csrf="{{csrf}}">
% waiting = any(c['job'] and c['job']['status'] == 'pending' for s in sessions for c in s['chunks'])
<p class="notice failure" id="stacker-warning" role="status" {{!'' if (waiting and stackers['silent']) else 'hidden'}}>
  No stacker is running (<span class="stacker-seen">{{stackers['text']}}</span>): pending jobs wait until one starts.</p>
% if not sessions:
<div class="empty-state">
  <p>No uploads yet.</p>
  <p><a class="button" href="/upload">Upload your first night</a></p>
</div>
% end
% for session in sessions:
<section class="session panel" data-session="{{session['id']}}">
  <div class="section-head">
    <h2>Batch {{numbers.get(session['id'], '')}} <span class="tag {{session['status']}}">{{session['status']}}</span></h2>
    <span class="hint">{{when(session['created_at'])}}</span>
  </div>
  % if not session['chunks']:
  <p class="hint">No frames in this batch.
  % if session['status'] in ('open', 'expired'):
    <form method="post" action="/batches/{{session['id']}}/dismiss" class="inline dismiss"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="small ghost">Dismiss</button></form>
  % end
  </p>
  % else:
  % if session['status'] == 'open':
  <p class="notice">Waiting for <b>Finalize</b>. <a href="/upload">Continue on the upload page</a>: drop the folder again and only what is missing is sent.</p>
  % end
  <div class="table-scroll">
  <table class="jobs">
    <thead><tr><th>Taken</th><th>Object</th><th>Frames</th><th>State</th><th class="progress-col">Progress</th><th></th></tr></thead>
    <tbody>
    % for chunk in session['chunks']:
      % job = chunk['job']
      <tr data-chunk="{{chunk['id']}}">
        <td title="chunk {{chunk['chunk_key']}} · telescope {{chunk['telescope']}}">{{block_text(chunk['chunk_key'])}}<br><span class="hint">{{model(chunk['telescope'], None)}}</span></td>
        <td>{{chunk['object']}}</td>
        <td>{{chunk['frames']}}</td>
        % if job:
        <td class="state {{job['status']}}" data-job="{{job['id']}}"><span class="state-text">{{job['status']}}</span>
          <div class="error small job-error" {{!'' if job['error'] else 'hidden'}}>{{job['error'] or ''}}</div>
          % for update in chunk.get('updates', []):
          <div class="hint small">{{update['kind']}} stack: {{update['status']}}</div>
          % end
        </td>
        <td class="progress-col">
          <div class="bar" data-progress-bar="{{job['id']}}" data-value="{{1 if job['status'] == 'done' else job['progress']}}"><div class="fill"></div></div>
          <span class="hint" data-message="{{job['id']}}">{{job['message'] or ''}}</span>
        </td>
        <td class="actions" data-actions="{{job['id']}}" data-status="{{job['status']}}">
          % job_actions(job)
        </td>
        % else:
        <td colspan="3" class="hint">waiting for Finalize</td>
        % end
      </tr>
    % end
    </tbody>
  </table>
  </div>
  % end
</section>
% end
</div>
<script src="/static/status.js" defer></script>
