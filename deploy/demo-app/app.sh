#!/bin/sh
# The stand-in legacy app: busybox httpd, which knows nothing of probes,
# traces or draining, and dies at once on SIGTERM. This wrapper only adds
# what the container tests observe:
#   * "app: SIGTERM at <uptime>" when TERM arrives (/proc/uptime is the
#     host's clock too, so the test can order it against its own events);
#   * APP_ON_TERM: exit0 (default: stop httpd, exit 0), ignore (keep
#     serving; only SIGKILL ends it), or a number to exit with;
#   * APP_ORPHANS=N: leaves N grandchildren (3 s each) re-parented to PID 1
#     (who must reap them) when the app starts.
# APP_LISTEN (default 127.0.0.1:8081) is where httpd listens.
set -u
# outrider signals the app's whole process group: an app that ignores TERM
# ignores it in its server processes too.
[ "${APP_ON_TERM:-exit0}" = ignore ] && trap '' TERM
/bin/httpd -f -p "${APP_LISTEN:-127.0.0.1:8081}" -h /www &
httpd=$!

on_term() {
    read -r up _ </proc/uptime
    echo "app: SIGTERM at $up"
    case "${APP_ON_TERM:-exit0}" in
        ignore) return ;;
        exit0) code=0 ;;
        *) code=$APP_ON_TERM ;;
    esac
    kill "$httpd" 2>/dev/null
    wait "$httpd"
    exit "$code"
}
trap on_term TERM

n=${APP_ORPHANS:-0}
while [ "$n" -gt 0 ]; do
    # The subshell exits at once; its sleep is orphaned.
    (sleep 3 &)
    n=$((n - 1))
done

echo "app: listening on ${APP_LISTEN:-127.0.0.1:8081}"
# `wait` returns early when a trapped signal arrives; keep waiting while
# httpd lives (APP_ON_TERM=ignore).
while kill -0 "$httpd" 2>/dev/null; do
    wait "$httpd"
done
