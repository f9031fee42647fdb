# syntax=docker/dockerfile:1
# vmidentity controller image: a static (musl) binary on distroless, non-root.
#   docker build -t ghcr.io/vmidentity/vmidentity:0.1.0 .
# scripts/check-packaging.sh checks this file and builds the same binary without Docker.
# --no-default-features: the image does not link the ARM simulator (`vmidentity demo` and
# `apply --simulator` are for local runs; there they fail naming the `simulator` feature).
# The release profile keeps line tables (~117 MiB static binary); the image drops the debug
# info but keeps the symbol table, so backtraces still name functions (~21 MiB).

FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p vmidentity --no-default-features \
 && strip --strip-debug /src/target/x86_64-unknown-linux-musl/release/vmidentity \
 && /src/target/x86_64-unknown-linux-musl/release/vmidentity --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /src/target/x86_64-unknown-linux-musl/release/vmidentity /vmidentity
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/vmidentity"]
CMD ["controller"]
