-- Stackers not seen for a long time (stopped, or a pid of a past run) are forgotten.
DELETE FROM stackers WHERE last_seen < :before
