-- A stacker asked for work or reported progress: note when.
UPDATE stackers SET last_seen = :now WHERE name = :stacker
