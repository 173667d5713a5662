# syntax=docker/dockerfile:1
# The Causeway image: /usr/local/bin/causeway (the operator, `causeway operator`) and
# /usr/local/bin/causeway-sidecar (injected into app pods by the operator's webhook), on a
# distroless base, as the non-root user 65532.
#
#   docker build -t ghcr.io/causeway-dev/causeway:0.1.0 .
#
# tests/tests/chart.rs checks this file's structure (no Docker engine in CI).

############################################################################################
# Builder
############################################################################################
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src

# 1. Dependencies only. The manifests and the lock file, with empty stand-ins for the sources,
#    build every dependency in a layer that is rebuilt only when a Cargo.toml or Cargo.lock
#    changes. Every workspace member's manifest must be present for the workspace to load;
#    tests/ and bench/ are members too but are never built here. The sidecar is built on its
#    own, not together with the CLI: Cargo unifies features across the packages of one build,
#    and the CLI's Kubernetes client would give the sidecar an HTTP/2 stack it never uses
#    (~1 MB of code, resident in every pod: see bench/README.md).
COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/Cargo.toml
COPY operator/Cargo.toml operator/Cargo.toml
COPY sidecar/Cargo.toml sidecar/Cargo.toml
COPY cli/Cargo.toml cli/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
RUN set -eu; \
    for crate in api operator sidecar tests; do mkdir -p "$crate/src"; : > "$crate/src/lib.rs"; done; \
    for crate in sidecar cli bench; do mkdir -p "$crate/src"; echo 'fn main() {}' > "$crate/src/main.rs"; done; \
    cargo build --profile dist --locked -p causeway-sidecar && cargo build --profile dist --locked -p causeway-cli

# 2. The sources. Touch them so that cargo rebuilds the workspace crates over the stand-ins
#    (a copied file keeps its old modification time). The sidecar's build script links it
#    with sidecar/link-order.txt, its hot functions first (less resident memory per pod: see
#    bench/README.md, "RSS idle"). That file names functions as this exact toolchain
#    (rust 1.95.0, pinned above) and Cargo.lock mangle them; bench/link-order.sh regenerates it.
COPY sidecar/build.rs sidecar/link-order.txt sidecar/
COPY api/src api/src
COPY operator/src operator/src
COPY sidecar/src sidecar/src
COPY cli/src cli/src
RUN set -eu; \
    find api/src operator/src sidecar/src cli/src -name '*.rs' -exec touch {} +; \
    cargo build --profile dist --locked -p causeway-sidecar && cargo build --profile dist --locked -p causeway-cli; \
    mkdir -p /out; \
    cp target/dist/causeway target/dist/causeway-sidecar /out/; \
    /out/causeway --version

############################################################################################
# Runtime: glibc and CA certificates, no shell, no package manager.
############################################################################################
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="causeway" \
      org.opencontainers.image.description="Causeway operator and sidecar: a unified event space for Kubernetes apps on NATS JetStream" \
      org.opencontainers.image.source="https://github.com/causeway-dev/causeway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/causeway /usr/local/bin/causeway
COPY --from=builder /out/causeway-sidecar /usr/local/bin/causeway-sidecar
USER 65532:65532
ENTRYPOINT ["causeway"]
CMD ["operator"]
