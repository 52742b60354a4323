-- Give the job back (a stacker shutting down): claimable again now, this attempt not counted.
UPDATE jobs
   SET status = 'pending',
       attempts = attempts - 1,
       run_after = :now,
       progress = 0,
       message = NULL,
       lease_token = NULL,
       lease_expires = NULL
 WHERE id = :id AND lease_token = :token AND status = 'running'
