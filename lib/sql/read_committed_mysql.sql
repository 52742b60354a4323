-- MariaDB: run this transaction at READ COMMITTED (PostgreSQL's default). At InnoDB's default,
-- REPEATABLE READ, locking reads and UPDATEs also lock the index gaps next to the rows they touch
-- (MariaDB even walks the (status, fair_rank, id) index for "WHERE id = ? AND status = ?"), and as
-- claims and completions move rows through that index ('done' sorts just before 'pending',
-- 'running' just after) they deadlock on each other's gaps. READ COMMITTED locks rows only.
-- It applies to the next transaction, so it must come before any other statement in it.
SET TRANSACTION ISOLATION LEVEL READ COMMITTED
