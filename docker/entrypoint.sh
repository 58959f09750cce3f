#!/bin/bash
# Run the container's command. Without EDGEFL_LOG_FILE it simply becomes PID 1 (the processes
# drain on SIGTERM themselves). With it, its output also goes to that file (a volume: a leaf's or
# the server's logs survive the container) and this script stays PID 1 to forward SIGTERM/SIGINT
# and to let `tee` write the last lines before the container ends.
set -u
if [[ -z "${EDGEFL_LOG_FILE:-}" ]]; then
  exec "$@"
fi
mkdir -p "$(dirname "$EDGEFL_LOG_FILE")"
exec > >(tee -a "$EDGEFL_LOG_FILE") 2>&1
tee_pid=$!
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break # a trap interrupted `wait`: the child is still draining
done
exec >&- 2>&- # tee sees the end of its input, writes what is left and exits
wait "$tee_pid"
exit "$status"
