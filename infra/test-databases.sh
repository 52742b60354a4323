#!/usr/bin/env bash
# Make sure the database servers the tests use are up, with the accounts tests/databases.py expects:
#   postgresql://postgres@127.0.0.1:5432/postgres   (password-less "trust" logins from 127.0.0.1)
#   mysql://root@127.0.0.1:3306/test                 (root with an empty password)
# A server that already answers is left alone. One that does not is started, and installed first from
# Debian packages (postgresql, mariadb-server) when missing; that, and fixing the logins, needs root.
# Safe to run any number of times. Servers elsewhere: set CROWDSKY_TEST_POSTGRES_URL /
# CROWDSKY_TEST_MARIADB_URL instead (see docs/queue.md).
# Only for test machines: it opens both servers to password-less logins from 127.0.0.1.
set -euo pipefail

HOST=127.0.0.1
PG_PORT=5432
MY_PORT=3306

log() { echo "test-databases: $*" >&2; }
die() { log "$*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root: run 'sudo $0'"; }

apt_install() {
    need_root "installing $*"
    command -v apt-get >/dev/null || die "no apt-get here: install $* with your package manager"
    log "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

# Retry a check for up to $1 seconds.
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# --- PostgreSQL ---------------------------------------------------------------------------------
pg_up() { pg_isready -q -h "$HOST" -p "$PG_PORT"; }
pg_login() { psql -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; }

ensure_postgres() {
    if ! command -v pg_isready >/dev/null; then
        if port_open "$PG_PORT"; then apt_install postgresql-client; else apt_install postgresql; fi
    fi
    if ! pg_up; then
        need_root "starting PostgreSQL"
        ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_install postgresql
        local version
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        [ -f "/etc/postgresql/$version/main/postgresql.conf" ] || pg_createcluster "$version" main
        log "starting PostgreSQL $version"
        # --skip-systemctl-redirect: also works where systemd is not running (containers, CI).
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for 60 pg_up || die "PostgreSQL $version did not start: see /var/log/postgresql/"
    fi
    if ! pg_login; then
        need_root "allowing password-less PostgreSQL logins from $HOST"
        local hba
        hba=$(runuser -u postgres -- psql -Atqc 'SHOW hba_file')
        # The first matching line wins, so the trust line goes on top.
        grep -qE "^host[[:space:]]+all[[:space:]]+all[[:space:]]+$HOST/32[[:space:]]+trust" "$hba" \
            || sed -i "1i host all all $HOST/32 trust" "$hba"
        runuser -u postgres -- psql -qc 'SELECT pg_reload_conf()' >/dev/null
        wait_for 10 pg_login || die "cannot log in to PostgreSQL as postgres from $HOST (check $hba)"
    fi
    log "PostgreSQL ready: postgresql://postgres@$HOST:$PG_PORT/postgres"
}

# --- MariaDB ------------------------------------------------------------------------------------
# mysqladmin ping succeeds whenever the server answers, even if it refuses the login.
my_up() { mysqladmin --host="$HOST" --port="$MY_PORT" --connect-timeout=2 ping >/dev/null 2>&1; }
my_sql() { mysql --host="$HOST" --port="$MY_PORT" --user=root --connect-timeout=5 -e "$1"; }

ensure_mariadb() {
    if ! command -v mysqladmin >/dev/null; then
        if port_open "$MY_PORT"; then apt_install mariadb-client; else apt_install mariadb-server; fi
    fi
    if ! my_up; then
        need_root "starting MariaDB"
        [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        install -d -o mysql -g mysql /run/mysqld
        log "starting MariaDB"
        # Started directly (not through systemd, which containers and CI may lack).
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
        wait_for 60 my_up || die "MariaDB did not start: see /var/log/mysql/ or run /usr/sbin/mariadbd --user=mysql"
    fi
    if ! my_sql 'SELECT 1' >/dev/null 2>&1; then
        need_root "allowing root to log in to MariaDB from $HOST without a password"
        # As the system's root the client gets in through the socket (Debian's unix_socket login).
        # Over TCP, 127.0.0.1 is root@127.0.0.1, or root@localhost where host names are resolved.
        mysql --user=root -e "
            CREATE USER IF NOT EXISTS 'root'@'$HOST' IDENTIFIED BY '';
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'$HOST' WITH GRANT OPTION;
            ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
            FLUSH PRIVILEGES;"
        my_sql 'SELECT 1' >/dev/null || die "cannot log in to MariaDB as root from $HOST"
    fi
    my_sql 'CREATE DATABASE IF NOT EXISTS test'
    log "MariaDB ready: mysql://root@$HOST:$MY_PORT/test"
}

ensure_postgres
ensure_mariadb
