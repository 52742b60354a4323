-- What lib/queue.py needs to place a new job of :owner_id in line (see "Fairness" there): the
-- owner's highest rank still in line, and the highest rank any stacker has claimed so far.
-- One lookup per status, each the first entry of an index read backwards. (Not MAX(): MariaDB
-- cannot answer MAX from the index because dataset indexes string columns by a prefix, and would
-- scan every done job.)
SELECT
    (SELECT fair_rank FROM jobs WHERE owner_id = :owner_id AND status = 'pending'
      ORDER BY fair_rank DESC LIMIT 1) AS owner_pending,
    (SELECT fair_rank FROM jobs WHERE owner_id = :owner_id AND status = 'running'
      ORDER BY fair_rank DESC LIMIT 1) AS owner_running,
    (SELECT fair_rank FROM jobs WHERE status = 'running' ORDER BY fair_rank DESC LIMIT 1) AS claimed_running,
    (SELECT fair_rank FROM jobs WHERE status = 'done' ORDER BY fair_rank DESC LIMIT 1) AS claimed_done,
    (SELECT fair_rank FROM jobs WHERE status = 'failed' ORDER BY fair_rank DESC LIMIT 1) AS claimed_failed
