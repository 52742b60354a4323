-- Running jobs whose stacker stopped sending heartbeats.
SELECT id, attempts, max_attempts FROM jobs
 WHERE status = 'running' AND lease_expires < :now
