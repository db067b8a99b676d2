#!/bin/sh
# Entry point of compose's redis service: render the ACL users from the environment
# (refusing empty or placeholder passwords), then run redis-server with them.
# The rendered file holds only password hashes and lives in the container's /tmp.
set -eu
here="$(dirname "$0")"
sh "$here/render-acl.sh" "$here/users.acl.template" /tmp/users.acl
exec redis-server --aclfile /tmp/users.acl "$@"
