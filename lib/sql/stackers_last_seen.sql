-- When any stacker was last seen (NULL: none ever).
SELECT MAX(last_seen) AS last_seen FROM stackers
