-- Claim the claimable job with the lowest rank, in one statement. FOR UPDATE SKIP LOCKED makes
-- concurrent claimers pass over a row another claimer has locked instead of waiting for it (and
-- then finding it taken); the outer status check re-reads the row once it is locked.
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
              LIMIT 1
              FOR UPDATE SKIP LOCKED)
   AND status = 'pending'
RETURNING *
