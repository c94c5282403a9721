#!/usr/bin/env bash
# Environment -> one `imgindex update` run: the nightly command of every scheduler in infra/
# (systemd, Kubernetes, Airflow). Installed as /usr/local/bin/imgindex-nightly.
#
#   IMGINDEX_INPUT         required  the archive as it is tonight (path, glob or fsspec URL)
#   IMGINDEX_COLLECTION    required  the collection root (path or fsspec URL)
#   IMGINDEX_UPDATE_FLAGS  optional  more `imgindex update` flags, split on whitespace
#   IMGINDEX_BEAM_OPTIONS  optional  Beam pipeline options (what goes after `--`), split likewise
#
# Arguments are added to the update flags. The summary is printed as JSON on stdout. `exec`
# hands imgindex's exit code (0, 2, 3, 70) and the scheduler's stop signal through unchanged;
# a missing variable exits 2, like any other error a user can fix.
set -euo pipefail

die() {
    echo "imgindex-nightly: $*" >&2
    exit 2
}
[[ -n "${IMGINDEX_INPUT:-}" ]] || die "set IMGINDEX_INPUT to the archive (path, glob or URL)"
[[ -n "${IMGINDEX_COLLECTION:-}" ]] || die "set IMGINDEX_COLLECTION to the collection root"
# read -a splits on whitespace without expanding globs in the flags.
read -r -a update_flags <<<"${IMGINDEX_UPDATE_FLAGS:-}"
read -r -a beam_options <<<"${IMGINDEX_BEAM_OPTIONS:-}"

exec imgindex update "$IMGINDEX_INPUT" --collection "$IMGINDEX_COLLECTION" --json \
    "${update_flags[@]}" "$@" -- "${beam_options[@]}"
