-- Claim, step 1 of 2 (MariaDB has no UPDATE ... RETURNING): lock the claimable job with the lowest
-- rank. SKIP LOCKED passes over rows other claimers hold; the lock lasts until the transaction ends,
-- so step 2 (claim_mysql_take.sql) updates a row nobody else can take.
SELECT id FROM jobs
 WHERE status = 'pending' AND run_after <= :now
   AND (:direct OR kind <> 'atlas')   -- lib/jobs.py DIRECT_ONLY: not for remote stackers
 ORDER BY fair_rank, id
 LIMIT 1
 FOR UPDATE SKIP LOCKED
