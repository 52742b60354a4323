% rebase('base.tpl')
<h1>Your uploads</h1>
% if not sessions:
<p>No uploads yet. <a href="/upload">Upload your first night</a>.</p>
% end
% for session in sessions:
<section class="session">
  <h2>Session {{session['id']}} <span class="tag">{{session['status']}}</span></h2>
  % if not session['chunks']:
  <p class="hint">No frames in this session.</p>
  % else:
  <table class="jobs">
    <thead><tr><th>Chunk</th><th>Object</th><th>Frames</th><th>Job</th><th>Progress</th><th></th></tr></thead>
    <tbody>
    % for chunk in session['chunks']:
      % job = chunk['job']
      <tr>
        <td><code>{{chunk['chunk_key']}}</code><br><span class="hint">{{chunk['telescope']}}</span></td>
        <td>{{chunk['object']}}</td>
        <td>{{chunk['frames']}}</td>
        % if job:
        <td data-job="{{job['id']}}" class="state {{job['status']}}">{{job['status']}}
          % if job['error']:
          <div class="error small">{{job['error']}}</div>
          % end
        </td>
        <td><progress max="1" value="{{job['progress']}}" data-progress="{{job['id']}}"></progress>
            <span class="hint" data-message="{{job['id']}}">{{job['message'] or ''}}</span></td>
        <td class="actions">
          % if job['stack_id']:
          <a href="/stacks/{{job['stack_id']}}">view stack</a>
          % end
          % if job['status'] == 'failed':
          <form method="post" action="/jobs/{{job['id']}}/retry" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="small">Retry</button></form>
          % end
          % if job['status'] != 'running':
          <form method="post" action="/jobs/{{job['id']}}/delete" class="inline"><input type="hidden" name="csrf_token" value="{{csrf}}"><button type="submit" class="small danger">Delete</button></form>
          % end
        </td>
        % else:
        <td colspan="3" class="hint">waiting for Finalize</td>
        % end
      </tr>
    % end
    </tbody>
  </table>
  % end
</section>
% end
<script src="/static/status.js" defer></script>
