-- A failed job gets a fresh set of attempts and a new place in line.
UPDATE jobs
   SET status = 'pending',
       attempts = 0,
       run_after = :now,
       fair_rank = :fair_rank,
       progress = 0,
       message = NULL,
       error = NULL,
       finished_at = NULL
 WHERE id = :id AND status = 'failed'
