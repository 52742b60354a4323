"""pytest fixtures that hand out fresh databases on SQLite, PostgreSQL and MariaDB."""
