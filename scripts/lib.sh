# shellcheck shell=bash
# Shared helpers for the scripts in this directory. Source it; do not execute it.
#
# Local services expected by the worker and its tests:
#   PostgreSQL on 127.0.0.1:5432, user postgres, no password (trust auth)
#   RabbitMQ   on 127.0.0.1:5672, user guest/guest
# Each ensure_* function first checks whether the service already answers and
# only installs (Debian packages) or starts it when it does not.

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
SERVICE_TIMEOUT=${SERVICE_TIMEOUT:-90}
LOG_PREFIX=${LOG_PREFIX:-$(basename "$0")}

# Daemon and admin tools live in sbin on Debian.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH="$PATH:/usr/sbin:/sbin" ;;
esac

_APT_UPDATED=0

log() {
    printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Run a command as root: directly when already root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        log "error: root privileges needed (no sudo available) for: $*"
        return 1
    fi
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND [ARGS...]
# Retries COMMAND once a second until it succeeds; returns 1 after the deadline.
wait_for() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "error: timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 1
    done
}

# tcp_open HOST PORT: true when something accepts connections there.
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# apt_install PACKAGE...: runs `apt-get update` once per script run, then installs.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "error: apt-get not found; install manually: $*"
        return 1
    fi
    if [[ $_APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        _APT_UPDATED=1
    fi
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o DPkg::Lock::Timeout=120 --no-install-recommends "$@" >&2
}

# ---------------------------------------------------------------- PostgreSQL

pg_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

pg_login_works() {
    psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

# Newest PostgreSQL major version with a cluster config, else newest installed.
pg_version() {
    local base
    for base in /etc/postgresql /usr/lib/postgresql; do
        if compgen -G "$base/*/" >/dev/null; then
            printf '%s\n' "$base"/*/ | xargs -n1 basename | sort -V | tail -1
            return 0
        fi
    done
    return 1
}

start_postgres() {
    local ver
    ver=$(pg_version) || die "PostgreSQL is installed but no version found under /etc/postgresql or /usr/lib/postgresql"
    if [[ ! -f /etc/postgresql/$ver/main/postgresql.conf ]]; then
        log "creating PostgreSQL $ver cluster 'main'"
        as_root pg_createcluster "$ver" main
    fi
    log "starting PostgreSQL $ver/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
        log "warning: pg_ctlcluster start returned non-zero (already running?)"
}

# Make `psql -h 127.0.0.1 -U postgres` work without a password. The local
# cluster's pg_hba.conf is only changed when that login fails.
ensure_pg_trust() {
    if ! command -v psql >/dev/null 2>&1; then
        apt_install postgresql-client || die "could not install the PostgreSQL client (psql)"
    fi
    pg_login_works && return 0

    local ver hba
    ver=$(pg_version) || die "cannot log in to PostgreSQL at $PG_HOST:$PG_PORT as postgres without a password, and no local cluster to configure"
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    [[ -f $hba ]] || die "cannot log in as postgres without a password and $hba does not exist"
    log "allowing passwordless (trust) logins from 127.0.0.1 and ::1 in $hba"
    as_root sed -i \
        -e '1i host all all 127.0.0.1/32 trust' \
        -e '1i host all all ::1/128 trust' \
        "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    wait_for "passwordless PostgreSQL login as postgres" 15 pg_login_works ||
        die "still cannot run: psql -h $PG_HOST -U postgres -c 'select 1'"
}

ensure_postgres() {
    if ! pg_answers; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1; then
            apt_install postgresql || die "could not install PostgreSQL"
        fi
        if ! pg_answers; then
            start_postgres
            wait_for "PostgreSQL on $PG_HOST:$PG_PORT" "$SERVICE_TIMEOUT" pg_answers ||
                die "PostgreSQL did not become ready; see /var/log/postgresql/"
        fi
    fi
    ensure_pg_trust
    log "PostgreSQL ready on $PG_HOST:$PG_PORT"
}

# ------------------------------------------------------------------ RabbitMQ

rabbit_answers() {
    tcp_open "$AMQP_HOST" "$AMQP_PORT"
}

ensure_rabbitmq() {
    if rabbit_answers; then
        log "RabbitMQ ready on $AMQP_HOST:$AMQP_PORT"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server || die "could not install RabbitMQ"
    fi
    if ! rabbit_answers; then
        log "starting RabbitMQ"
        as_root rabbitmq-server -detached
        wait_for "RabbitMQ on $AMQP_HOST:$AMQP_PORT" "$SERVICE_TIMEOUT" rabbit_answers ||
            die "RabbitMQ did not become ready; see /var/log/rabbitmq/"
        as_root timeout 60 rabbitmqctl -q await_startup >/dev/null ||
            log "warning: rabbitmqctl await_startup failed, although port $AMQP_PORT is open"
    fi
    log "RabbitMQ ready on $AMQP_HOST:$AMQP_PORT"
}

# ------------------------------------------------------------------ promtool

ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        log "promtool found"
        return 0
    fi
    if apt_install prometheus && command -v promtool >/dev/null 2>&1; then
        log "promtool installed"
    else
        log "warning: could not install promtool (Debian package prometheus); tests that use it will not have it"
    fi
}

ensure_services() {
    ensure_postgres
    ensure_rabbitmq
    ensure_promtool
}

# ----------------------------------------------------------- database URLs

# db_name_from_url URL: the database name (path) of a postgres:// URL, or empty.
db_name_from_url() {
    local name
    name=$(sed -E 's#^[A-Za-z][A-Za-z0-9+.-]*://##; s#[?#].*$##; s#^[^/]*/?##' <<<"$1")
    # Decode %XX escapes.
    printf '%b' "${name//%/\\x}"
}

# admin_url_from_url URL: the same server and credentials, database "postgres",
# query parameters dropped (they may be client-specific).
admin_url_from_url() {
    sed -E 's#[?#].*$##; s#^([A-Za-z][A-Za-z0-9+.-]*://[^/]*).*$#\1/postgres#' <<<"$1"
}

# ensure_database URL: create the database named in URL when it does not exist.
ensure_database() {
    local url=$1 db admin exists
    db=$(db_name_from_url "$url")
    if [[ -z $db ]]; then
        log "no database name in $url; not creating one"
        return 0
    fi
    admin=$(admin_url_from_url "$url")
    exists=$(psql -X -w -d "$admin" -tAc "select 1 from pg_database where datname = '${db//\'/\'\'}'")
    if [[ $exists == 1 ]]; then
        log "database $db exists"
    else
        log "creating database $db"
        createdb -w --maintenance-db="$admin" "$db"
    fi
}

# ---------------------------------------------------------- test leftovers

# Drop databases named bwt_* and delete broker queues/exchanges named bwt*,
# left behind by interrupted test runs. Failures only produce warnings.
cleanup_test_leftovers() {
    local admin out count names name queues=() exchanges=()
    admin=$(admin_url_from_url "${BILLING_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}")

    if out=$(psql -X -w -v ON_ERROR_STOP=1 -d "$admin" 2>&1 <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
FROM pg_database
WHERE datname LIKE 'bwt\_%'
\gexec
SELECT format('DROP ROLE IF EXISTS %I', rolname)
FROM pg_roles
WHERE rolname LIKE 'bwt\_role\_%'
\gexec
SQL
    ); then
        count=$(grep -c '^DROP DATABASE' <<<"$out" || true)
        ((count == 0)) || log "dropped $count leftover test database(s)"
    else
        log "warning: could not drop leftover test databases: $out"
    fi

    if names=$(as_root timeout 60 rabbitmqctl -q list_queues --no-table-headers name </dev/null 2>/dev/null); then
        mapfile -t queues < <(grep '^bwt' <<<"$names" || true)
        ((${#queues[@]} == 0)) || log "deleting ${#queues[@]} leftover test queue(s)"
        for name in "${queues[@]}"; do
            as_root timeout 60 rabbitmqctl -q delete_queue "$name" </dev/null >/dev/null 2>&1 ||
                log "warning: could not delete queue $name"
        done
    else
        log "warning: could not list broker queues (rabbitmqctl failed)"
    fi

    # rabbitmqctl cannot delete exchanges; rabbitmqadmin needs the management plugin.
    if command -v rabbitmqadmin >/dev/null 2>&1 &&
        names=$(rabbitmqadmin -q -f tsv list exchanges name </dev/null 2>/dev/null); then
        mapfile -t exchanges < <(grep '^bwt' <<<"$names" || true)
        ((${#exchanges[@]} == 0)) || log "deleting ${#exchanges[@]} leftover test exchange(s)"
        for name in "${exchanges[@]}"; do
            rabbitmqadmin -q delete exchange name="$name" </dev/null >/dev/null 2>&1 ||
                log "warning: could not delete exchange $name"
        done
    fi
}
