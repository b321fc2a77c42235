#!/usr/bin/env bash
# The digest of what deploy/Dockerfile copies into the image (the sources, pyproject.toml,
# README.md, the image's configuration) and of the Dockerfile itself. build-image.sh labels
# the image with it (`sfstream.source-digest`), and tests/certify/fargate compares it with
# the working tree's to tell a stale image from a current one.
set -euo pipefail
cd "$(dirname "$0")/.."
{
    find src -type f ! -path '*/__pycache__/*' ! -name '*.pyc'
    printf '%s\n' pyproject.toml README.md deploy/Dockerfile deploy/sfstream.yaml .dockerignore
} | LC_ALL=C sort | while IFS= read -r path; do
    printf '%s  %s\n' "$(sha256sum <"$path" | cut -d' ' -f1)" "$path"
done | sha256sum | cut -d' ' -f1
