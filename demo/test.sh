#!/bin/sh
# The demo's test: fetch the linked service's page and check what it says.
set -eu
body=$(wget -q -O - "$SERVICE_URL")
echo "service answered: $body"
[ "$body" = "dockhand demo service" ] || { echo "unexpected answer" >&2; exit 3; }
echo "ok"
# A JUnit report of the check, which the task's `reports` reads into the job's results.
mkdir -p /app/results
cat > /app/results/test.xml <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="demo" tests="1" failures="0">
  <testcase classname="demo.service" name="answers_its_page" time="0.01"/>
</testsuite>
EOF
