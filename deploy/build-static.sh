#!/usr/bin/env bash
# Builds the binary outrider ships: a static glibc executable (no
# interpreter, no shared libraries), so it runs in a `FROM scratch` image and
# can be copied into any other image for wrap mode. Prints its path.
#
#   bash deploy/build-static.sh
#
# Static glibc rather than musl: it needs no extra Rust target, so every
# machine with the stable toolchain builds it, offline included, and it
# keeps glibc's faster memcpy/string routines (the allocator is jemalloc
# either way). Name resolution needs no NSS modules at run time: glibc has
# had `files` and `dns` built in since 2.34 (Debian 12 ships 2.36), and the
# container runtime mounts /etc/hosts and /etc/resolv.conf. `--target` is spelled out so that RUSTFLAGS reach only the
# target, not build scripts and proc macros, which must stay dynamic.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=x86_64-unknown-linux-gnu
case "$(uname -m)" in
    x86_64) ;;
    aarch64) TARGET=aarch64-unknown-linux-gnu ;;
    *) echo "build-static.sh: no static target known for $(uname -m)" >&2; exit 1 ;;
esac

# The path comes from cargo itself, so CARGO_TARGET_DIR and a configured
# target-dir are honoured.
bin=$(RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$TARGET" --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/outrider\)".*/\1/p' | tail -n 1)
[[ -n $bin && -x $bin ]] || { echo "build-static.sh: cargo named no outrider executable" >&2; exit 1; }
# A static executable has no program interpreter; a dynamic one would fail
# in a scratch image with a confusing "no such file or directory".
if readelf -l "$bin" 2>/dev/null | grep -q 'program interpreter'; then
    echo "build-static.sh: $bin is dynamically linked" >&2
    exit 1
fi
echo "$bin"
