# syntax=docker/dockerfile:1
#
# rc-kafka-bridge container image.
#
#   docker build -t rc-kafka-bridge .
#   docker run -p 8080:8080 -p 9180:9180 rc-kafka-bridge            # embedded development broker
#   docker run -e RCKB_BROKERS=kafka:9092 ... rc-kafka-bridge serve   # a real Kafka cluster

# ---- build -------------------------------------------------------------------------------------------
# Same toolchain as development and CI (ci/validate-deploy.sh checks the version against rustc).
# rust:bookworm already has what the rdkafka crate needs to build librdkafka from source
# (make, gcc, g++, perl, zlib).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and incremental build output between image builds; the binary
# is copied out of the cached target directory in the same step, since the mount is gone afterwards.
# --locked: build exactly the dependency versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/rc-kafka-bridge /out/rc-kafka-bridge

# ---- runtime -----------------------------------------------------------------------------------------
# Same Debian release as the builder, so the binary finds the glibc it was linked against.
# librdkafka is linked statically; zlib (zlib1g) is part of the slim base.
FROM debian:bookworm-slim

# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
# CA certificates: the RingCentral client does not need them (it carries Mozilla's root certificates,
# compiled in, so that it works on any machine, this image included), but librdkafka does for TLS to a
# Kafka cluster whose certificate a public CA signed (managed Kafka services). Unpinned on purpose:
# root certificates must follow Debian's security updates.
ARG UID=10001
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${UID}" rckb \
    && useradd --system --uid "${UID}" --gid rckb --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin rckb \
    && install -d -o rckb -g rckb -m 0750 /var/lib/rc-kafka-bridge

COPY --from=build /out/rc-kafka-bridge /usr/local/bin/rc-kafka-bridge

# The spool holds notifications already answered 200 but not yet acknowledged by Kafka: it must
# outlive the container, so it is a volume.
ENV RCKB_SPOOL_DIR=/var/lib/rc-kafka-bridge \
    RCKB_LOG_FORMAT=json
VOLUME ["/var/lib/rc-kafka-bridge"]

USER ${UID}:${UID}
# 8080: RingCentral webhook (POST /webhook). 9180: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9180

# The slim image has no curl or wget, and installing curl adds ~10 MB of libraries for one request:
# bash's /dev/tcp sends a plain HTTP/1.0 GET to the admin listener and checks the status line.
# Adjust the port if RCKB_ADMIN_LISTEN moves the admin listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9180 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["rc-kafka-bridge"]
CMD ["serve"]
