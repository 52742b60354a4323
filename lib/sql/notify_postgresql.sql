-- Wake idle stackers (lib/queue.py wait_for_work). Sent on commit; PostgreSQL folds identical
-- notifications of one transaction into one, so a finalize with many jobs sends one.
SELECT pg_notify(:channel, '')
