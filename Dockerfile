# syntax=docker/dockerfile:1
# vmidentity controller image for linux/amd64 and linux/arm64: a static (musl) binary on
# distroless, non-root.
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/vmidentity/vmidentity:0.1.0 .
# The builder runs on the build machine's own platform ($BUILDPLATFORM) and cross-compiles
# for $TARGETARCH: amd64 with musl-gcc (musl-tools), arm64 with cargo-zigbuild and Zig as the
# cross linker (both from PyPI, pinned). scripts/check-packaging.sh checks this file and builds
# both binaries the same way without Docker; docs/release.md is the release procedure (SBOM,
# signing).
# --no-default-features: the image does not link the ARM simulator (`vmidentity demo` and
# `apply --simulator` are for local runs; there they fail naming the `simulator` feature).
# The release profile keeps line tables (~117 MiB static binary); the image drops the debug
# info but keeps the symbol table, so backtraces still name functions (~21 MiB).

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS builder
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools binutils-aarch64-linux-gnu python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN pip3 install --no-cache-dir --break-system-packages cargo-zigbuild==0.24.0 ziglang==0.17.0
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    case "$TARGETARCH" in \
    amd64) cargo build --release --locked --target x86_64-unknown-linux-musl -p vmidentity --no-default-features \
        && strip --strip-debug /src/target/x86_64-unknown-linux-musl/release/vmidentity \
        && cp /src/target/x86_64-unknown-linux-musl/release/vmidentity /vmidentity ;; \
    arm64) cargo zigbuild --release --locked --target aarch64-unknown-linux-musl -p vmidentity --no-default-features \
        && aarch64-linux-gnu-strip --strip-debug /src/target/aarch64-unknown-linux-musl/release/vmidentity \
        && cp /src/target/aarch64-unknown-linux-musl/release/vmidentity /vmidentity ;; \
    *) echo "unsupported TARGETARCH=$TARGETARCH (amd64, arm64)" >&2; exit 1 ;; \
    esac

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /vmidentity /vmidentity
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/vmidentity"]
CMD ["controller"]
