#!/bin/sh
# Test double of the influxdb:1.8 entry point: run influxd (settings from the
# INFLUXDB_* environment) and, once its HTTP API answers, create INFLUXDB_DB
# if it is set ("CREATE DATABASE" is a no-op for an existing database).
# influxd stays in the foreground process group; TERM and INT are passed on.
set -eu
chown -R influxdb:influxdb /var/lib/influxdb
port="${INFLUXDB_HTTP_BIND_ADDRESS##*:}"
url="http://127.0.0.1:${port}"

setpriv --reuid=influxdb --regid=influxdb --init-groups influxd -config /etc/influxdb/influxdb.conf "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT

if [ -n "${INFLUXDB_DB:-}" ]; then
    tries=0
    until curl --silent --fail --max-time 2 --noproxy '*' "$url/ping" >/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || exit $?
            exit 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ]; then
            echo "influxdb-entrypoint: influxd did not answer on $url within 60 s" >&2
            kill -TERM "$pid"
            exit 1
        fi
        sleep 0.2
    done
    curl --silent --show-error --fail --max-time 10 --noproxy '*' -XPOST "$url/query" \
        --data-urlencode "q=CREATE DATABASE \"${INFLUXDB_DB}\"" >/dev/null
    echo "influxdb-entrypoint: database ${INFLUXDB_DB} ready"
fi

status=0
wait "$pid" || status=$?
# a signal interrupts the first wait; wait again for influxd to finish
if kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || status=$?
fi
exit "$status"
