#!/usr/bin/env bash
# Nightly reindex: caption the archive, build a fresh index beside the live one, then switch.
# Readers keep using the old index until the symlink flips, and a failed night leaves it alone.
#   ARCHIVE=gs://bucket/shards/'*.tar' ROOT=/srv/imgindex infra/nightly-reindex.sh [-- BEAM_ARGS]
set -euo pipefail
: "${ARCHIVE:?set ARCHIVE to the input shards}" "${ROOT:?set ROOT to the output root}"
night="$(date -u +%Y%m%d)"
out="$ROOT/runs/$night"
imgindex run "$ARCHIVE" --out "$out" --overwrite "$@"
ln -sfn "$out/index" "$ROOT/current.tmp"
mv -T "$ROOT/current.tmp" "$ROOT/current"      # atomic switch of the served index
# Keep the last 7 nights.
ls -1d "$ROOT"/runs/* | sort | head -n -7 | xargs -r rm -rf
