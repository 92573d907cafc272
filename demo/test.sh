#!/bin/sh
# The demo's test: fetch the linked service's page and check what it says.
set -eu
body=$(wget -q -O - "$SERVICE_URL")
echo "service answered: $body"
[ "$body" = "dockhand demo service" ] || { echo "unexpected answer" >&2; exit 3; }
echo "ok"
