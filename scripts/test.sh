#!/usr/bin/env bash
# Run the unit and end-to-end suites (uvu) and print one closing line
# "N passed, N failed, N skipped". Exits non-zero when any test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
status=0
for suite in test/unit test/fuzz test/e2e; do
  [ -d "$suite" ] || continue
  echo "== $suite"
  npx uvu -r tsx "$suite" '\.test\.ts$' 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
strip() { sed 's/\x1b\[[0-9;]*m//g' "$log"; }
total=$(strip | awk '/Total:/ {s+=$2} END {print s+0}')
passed=$(strip | awk '/Passed:/ {s+=$2} END {print s+0}')
skipped=$(strip | awk '/Skipped:/ {s+=$2} END {print s+0}')
failed=$((total - passed - skipped))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
rm -f "$log"
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
