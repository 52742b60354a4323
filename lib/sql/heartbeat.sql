-- Extend the lease and report progress; matches nothing once the lease is no longer ours.
UPDATE jobs
   SET lease_expires = :lease_expires,
       progress = :progress,
       message = :message
 WHERE id = :id AND lease_token = :token AND status = 'running'
