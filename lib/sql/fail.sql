-- An attempt failed: back to pending after :run_after, or failed for good (lib/queue.py decides).
UPDATE jobs
   SET status = :status,
       run_after = :run_after,
       error = :error,
       finished_at = :finished_at,
       lease_token = NULL,
       lease_expires = NULL
 WHERE id = :id AND lease_token = :token AND status = 'running'
