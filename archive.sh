#!/usr/bin/env bash
# Pack an export directory (docs/export-format.md) into a TorchServe model archive.
#
#   ./archive.sh artifacts/demo                    # -> model_store/seqrec_<version>.mar + seqrec.mar link
#   export TS_CONFIG_FILE=$PWD/config.properties && torchserve --start --models seqrec.mar
#
# One archive per model version, named <name>_<version>.mar so versions coexist in one model
# store and load side by side (--models seqrec=seqrec_1.0.mar seqrec=seqrec_2.0.mar); <name>.mar
# is a symlink to the version archived last, the stable name `make serve` uses.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
    cat >&2 <<EOF
usage: $0 <export-dir> [--name seqrec] [--out model_store] [--config handler/model-config.yaml] [--deflate]

  <export-dir>  directory written by \`python -m train --out ...\` (model.pt, item_vectors.npy,
                items.parquet, metadata.json with model_version and sha256 of every file)
  --name        model name inside the archive (default seqrec)
  --out         model store directory (default model_store; created if missing)
  --config      TorchServe model YAML: batchSize, maxBatchDelay, minWorkers, maxWorkers,
                responseTimeout (default handler/model-config.yaml)
  --deflate     compress the archive's files (default: stored as they are: item vectors and
                weights barely compress; 2M items' 1.13 GB of files deflated to 1.04 GB)
EOF
    exit 2
}
die() { echo "archive.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
EXPORT="$1"; shift
NAME=seqrec
OUT=model_store
CONFIG="$HERE/handler/model-config.yaml"
FORMAT=zip-store
while [[ $# -gt 0 ]]; do
    case "$1" in
        --name) [[ $# -ge 2 ]] || usage; NAME="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || usage; OUT="$2"; shift 2 ;;
        --config) [[ $# -ge 2 ]] || usage; CONFIG="$2"; shift 2 ;;
        --deflate) FORMAT=default; shift ;;
        -h|--help) usage ;;
        *) echo "archive.sh: unknown argument: $1" >&2; usage ;;
    esac
done

[[ -d "$EXPORT" ]] || die "export directory not found: $EXPORT"
[[ -f "$CONFIG" ]] || die "model config not found: $CONFIG"
[[ "$NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || die "--name must be letters, digits, _ or - (got '$NAME')"

ARCHIVER="${TORCH_MODEL_ARCHIVER:-$(command -v torch-model-archiver || true)}"
[[ -n "$ARCHIVER" ]] || ARCHIVER="$HERE/.venv/bin/torch-model-archiver"
[[ -x "$ARCHIVER" ]] || die "torch-model-archiver not found: run \`make setup\` or activate the venv (or set TORCH_MODEL_ARCHIVER)"
PYTHON="$HERE/.venv/bin/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3 || true)"
[[ -n "$PYTHON" ]] || die "python3 not found"

# The export checked now rather than when TorchServe loads the archive, by the module the handler
# checks it with again at load (format version, every file listed with its sha256); it prints the
# model_version, or one line saying what is wrong.
VERSION="$(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m handler.seqrec_artifact verify "$EXPORT")" || exit 1
[[ "$VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
    || die "model_version '$VERSION' must be letters, digits, '.', '_' or '-' (it becomes a file name and a URL part)"

mkdir -p "$OUT"
# Build in a scratch folder inside $OUT, then rename: the archiver writes <name>.mar, which may be
# our symlink to an older version's archive.
TMP="$(mktemp -d "$OUT/.archive.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# handler/ is exactly what the archive carries: every file in it (the handler is --handler, the
# model YAML --config-file, the rest are extra files), so there is no list of modules to keep here.
EXTRA=""
for f in "$HERE"/handler/*; do
    [[ -f "$f" && "$f" != "$HERE/handler/seqrec_handler.py" ]] && EXTRA+="$f,"
done
# The export's files are the ones its metadata.json lists (the candidate index among them when the
# export has one), model.pt aside as the serialized file.
while IFS= read -r f; do
    [[ "$f" != "model.pt" ]] && EXTRA+="$EXPORT/$f,"
done < <(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m handler.seqrec_artifact files "$EXPORT")
EXTRA+="$EXPORT/metadata.json"
"$ARCHIVER" --model-name "$NAME" --version "$VERSION" \
    --serialized-file "$EXPORT/model.pt" \
    --handler "$HERE/handler/seqrec_handler.py" \
    --extra-files "$EXTRA" \
    --config-file "$CONFIG" \
    --archive-format "$FORMAT" \
    --export-path "$TMP" --force \
    || die "torch-model-archiver failed"

MAR="${NAME}_${VERSION}.mar"
mv -f "$TMP/$NAME.mar" "$OUT/$MAR"
ln -sfn "$MAR" "$OUT/$NAME.mar"
echo "$OUT/$MAR (version $VERSION); $OUT/$NAME.mar -> $MAR"
