#!/usr/bin/env bash
# until_deadline.sh DEADLINE COMMAND [ARGS...] -- run COMMAND, and at DEADLINE (epoch seconds; empty or 0: no
# deadline) send it SIGINT, then SIGKILL GRACE seconds later (default 20) if it is still running.  For pytest
# runs that a device call's limit would otherwise cut with nothing printed: SIGINT makes pytest stop after the
# current test and still print its summary (failures with tracebacks, -rA's lines, JUnit XML).  Exits with
# COMMAND's status, or 124 where the deadline cut it (as timeout does).  A deadline already past (or under 5 s
# away) does not start COMMAND: it says so and exits 124.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DEADLINE COMMAND [ARGS...]" >&2; exit 2; }
deadline="$1"
shift
if [ -z "$deadline" ] || [ "$deadline" = 0 ]; then exec "$@"; fi
left=$(( deadline - $(date +%s) ))
if [ "$left" -lt 5 ]; then
  echo "until_deadline: ${left} s left before the deadline: not started: $*"
  exit 124
fi
exec timeout -s INT -k "${GRACE:-20}" "$left" "$@"
