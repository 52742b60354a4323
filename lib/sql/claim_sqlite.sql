-- Claim the claimable job with the lowest rank, in one statement. SQLite lets one writer in at a
-- time and this statement takes the write lock before its sub-select runs, so no other process can
-- claim the same row in between; the outer status check keeps it safe even so.
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
 WHERE id = (SELECT id FROM jobs
              WHERE status = 'pending' AND run_after <= :now
                AND (:direct OR kind <> 'atlas')   -- lib/jobs.py DIRECT_ONLY: not for remote stackers
              ORDER BY fair_rank, id
              LIMIT 1)
   AND status = 'pending'
RETURNING *
