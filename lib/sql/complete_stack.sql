-- Link the finished job to the stack row its stacker recorded (same transaction as complete.sql).
UPDATE jobs SET stack_id = :stack_id WHERE id = :id
