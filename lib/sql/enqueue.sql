-- A new job: pending, claimable now. RETURNING works on PostgreSQL, MariaDB >= 10.5 and SQLite >= 3.35.
INSERT INTO jobs (kind, chunk_id, owner_id, status, attempts, max_attempts, run_after,
                  progress, fair_rank, created_at)
VALUES (:kind, :chunk_id, :owner_id, 'pending', 0, :max_attempts, :now,
        0, :fair_rank, :now)
RETURNING id
