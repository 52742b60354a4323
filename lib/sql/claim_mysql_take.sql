-- Claim, step 2 of 2: the row locked by claim_mysql.sql becomes ours.
UPDATE jobs
   SET status = 'running',
       attempts = attempts + 1,
       lease_token = :token,
       lease_expires = :lease_expires,
       worker = :worker,
       started_at = :now,
       finished_at = NULL,
       progress = 0,
       message = NULL
 WHERE id = :id AND status = 'pending'
