#!/bin/sh
# Rebuilds ../ggml_blocks.safetensors from a ggml checkout:
#   model/gguf/testdata/ggml/gen.sh /path/to/ggml
# The committed file was made from ggml-org/ggml d99724f2 with gcc 12,
# -O2 and no FMA contraction (ggml's reference semantics: one rounding per
# C operator).
set -eu
ggml=${1:?usage: gen.sh GGML_CHECKOUT}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -std=c11 -O2 -ffp-contract=off -I"$ggml/include" -I"$ggml/src" -I"$ggml/src/ggml-cpu" \
  -c "$ggml/src/ggml-quants.c" -o "$tmp/ggml-quants.o"
cc -std=c11 -O2 -ffp-contract=off -I"$ggml/include" -I"$ggml/src" \
  "$here/gen_blocks.c" "$tmp/ggml-quants.o" -lm -o "$tmp/gen_blocks"
"$tmp/gen_blocks" "$here/../ggml_blocks.safetensors"
