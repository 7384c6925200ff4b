# syntax=docker/dockerfile:1
# vdrive image: one binary for `vdrive controller`, `vdrive node` and `vdrive sign`.
#
#   docker build -t vdrive/vdrive:0.1.0 .
#
# Runs as an unprivileged user by default; the node DaemonSet and the
# drive-signing Jobs run it as root and privileged.

FROM rust:1-slim-trixie AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY benches benches
COPY src src
# The CSI bindings are generated with protox at build time: no protoc needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vdrive \
    && install -D -m 0755 target/release/vdrive /out/vdrive

FROM debian:trixie-slim
# Filesystem and block-device tools the node plugin runs: mkfs/resize for ext4
# and xfs, losetup, wipefs, blkid, blockdev, findmnt, mount.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates e2fsprogs xfsprogs util-linux mount \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/vdrive /usr/local/bin/vdrive
USER 65532:65532
ENTRYPOINT ["vdrive"]
