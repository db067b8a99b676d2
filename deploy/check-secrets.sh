#!/bin/sh
# Refuses to start a server with an empty or placeholder secret, then runs it:
#
#   check-secrets.sh VAR [VAR ...] -- command [args ...]
#
# Each VAR must name a non-empty environment variable whose value does not start with
# "change-me" (the placeholders of .env.example) and is at least 16 characters long;
# otherwise one line per problem goes to stderr and the exit status is 78 (EX_CONFIG),
# so compose shows the container as failed instead of serving with a guessable password.
# compose runs nats-server and redis-server through it.
set -eu
bad=0
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  var="$1"; shift
  eval "val=\${$var-}"
  case "$val" in
    "") echo "refusing to start: $var is empty or unset (set it in .env)" >&2; bad=1 ;;
    change-me*|CHANGE-ME*|Change-me*)
        echo "refusing to start: $var is still the .env.example placeholder (generate one: openssl rand -hex 24)" >&2; bad=1 ;;
    *) if [ "${#val}" -lt 16 ]; then
         echo "refusing to start: $var is shorter than 16 characters" >&2; bad=1
       fi ;;
  esac
done
[ "$bad" -eq 0 ] || exit 78
[ "${1-}" = "--" ] && shift
[ "$#" -gt 0 ] || exit 0
exec "$@"
