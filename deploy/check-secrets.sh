#!/bin/sh
# Refuses to start a server with an empty or placeholder secret, then runs it:
#
#   check-secrets.sh [-q] VAR [VAR ...] -- command [args ...]
#
# Each VAR must name a non-empty environment variable whose value does not start with
# "change-me" (the placeholders of .env.example) and is at least 16 characters long;
# otherwise one line per problem goes to stderr and the exit status is 78 (EX_CONFIG),
# so compose shows the container as failed instead of serving with a guessable password.
# compose runs nats-server and redis-server through it.
#
# -q (nats-server): re-export each VAR wrapped in double quotes. nats-server parses the
# value of a $VAR reference as a config value, so a password that starts with a digit
# ("3fa9…", half of all `openssl rand -hex` outputs) or a "-" is refused as a malformed
# number; quoted, it is a string. A value containing a double quote or a backslash is
# refused.
set -eu
quote=0
if [ "${1-}" = "-q" ]; then quote=1; shift; fi
bad=0
vars=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  var="$1"; shift
  vars="$vars $var"
  eval "val=\${$var-}"
  case "$val" in
    "") echo "refusing to start: $var is empty or unset (set it in .env)" >&2; bad=1 ;;
    change-me*|CHANGE-ME*|Change-me*)
        echo "refusing to start: $var is still the .env.example placeholder (generate one: openssl rand -hex 24)" >&2; bad=1 ;;
    *\"*|*\\*) echo "refusing to start: $var contains a double quote or a backslash" >&2; bad=1 ;;
    *) if [ "${#val}" -lt 16 ]; then
         echo "refusing to start: $var is shorter than 16 characters" >&2; bad=1
       fi ;;
  esac
done
[ "$bad" -eq 0 ] || exit 78
if [ "$quote" -eq 1 ]; then
  for var in $vars; do
    eval "val=\${$var}"
    export "$var=\"$val\""
  done
fi
[ "${1-}" = "--" ] && shift
[ "$#" -gt 0 ] || exit 0
exec "$@"
