-- Finish a job; matches nothing once the lease is no longer ours. Also locks the row, so the
-- stack row inserted next in the same transaction cannot race a replacement stacker.
UPDATE jobs
   SET status = 'done',
       progress = 1,
       finished_at = :now,
       error = NULL,
       lease_token = NULL,
       lease_expires = NULL
 WHERE id = :id AND lease_token = :token AND status = 'running'
