-- The first sign of a stacker (UNIQUE(name): a concurrent first sign fails and updates instead).
INSERT INTO stackers (name, last_seen) VALUES (:stacker, :now)
