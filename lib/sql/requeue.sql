-- Take an expired lease away: the job goes to :status (pending or failed). Checks the expiry again,
-- so a heartbeat that arrived since expired.sql ran keeps the job with its stacker.
UPDATE jobs
   SET status = :status,
       run_after = :now,
       error = COALESCE(:error, error),
       finished_at = :finished_at,
       lease_token = NULL,
       lease_expires = NULL
 WHERE id = :id AND status = 'running' AND lease_expires < :now
