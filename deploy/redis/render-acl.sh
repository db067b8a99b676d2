#!/bin/sh
# Renders users.acl.template into a Redis ACL file: every variable name in angle brackets
# becomes "#" + the SHA-256
# of the environment variable VAR (Redis stores and compares hashed passwords), after
# deploy/check-secrets.sh-style checks (no empty, placeholder or short password).
#
#   render-acl.sh TEMPLATE OUT
set -eu
tmpl="$1"; out="$2"
vars=$(grep -o '<[A-Z_][A-Z0-9_]*>' "$tmpl" | tr -d '<>' | sort -u)
sh "$(dirname "$0")/../check-secrets.sh" $vars
umask 077
cp "$tmpl" "$out.tmp"
for v in $vars; do
  eval "val=\${$v}"
  h=$(printf '%s' "$val" | sha256sum | cut -d' ' -f1)
  sed -i "s/<$v>/#$h/g" "$out.tmp"
done
grep -v '^[[:space:]]*#' "$out.tmp" | grep -v '^[[:space:]]*$' > "$out"
rm -f "$out.tmp"
