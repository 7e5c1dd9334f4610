# syntax=docker/dockerfile:1
# Release image of shardwallet.
#   docker build -t shardwallet .          (or: make up, through docker-compose.yaml)
# The image holds the binary, the default config (shardwallet.toml, shard-map.toml),
# the Docker shard map, migrations/ and testdata/. Point it at real shards with
# SHARDWALLET__SHARDS__MAP_PATH and SHARDWALLET_SHARD_<NAME>_PASSWORD.

# --- build -------------------------------------------------------------------
# rust:bookworm has gcc and make, which rdkafka needs to build librdkafka from source.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and the target dir between builds; the
# binary is copied out within the same step because the target dir is not in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/shardwallet /usr/local/bin/shardwallet

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for TLS to managed databases/brokers; curl for the health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 shardwallet \
 && useradd --system --uid 10001 --gid shardwallet --home-dir /opt/shardwallet --no-create-home shardwallet

# Relative paths in the config (shards.map_path) and testdata/ resolve from here.
WORKDIR /opt/shardwallet
COPY --from=builder /usr/local/bin/shardwallet /usr/local/bin/shardwallet
COPY shardwallet.toml shard-map.toml ./
COPY migrations/ ./migrations/
COPY testdata/ ./testdata/
COPY docker/shard-map.docker.toml /etc/shardwallet/shard-map.docker.toml
# Fail the build here, not at start-up, if the binary links a library the slim image lacks.
RUN if ldd /usr/local/bin/shardwallet | grep 'not found'; then exit 1; fi \
 && shardwallet --help >/dev/null

# Inside a container the service must listen beyond loopback.
ENV SHARDWALLET__SERVER__LISTEN=0.0.0.0:8080
# The shardwallet.toml copied above declares a development deployment (it ships known
# secrets); the image is a production one unless its environment says `dev`
# (docker-compose.yaml does), so it refuses to serve on the shipped secrets.
ENV SHARDWALLET__SERVER__PROFILE=production
USER 10001:10001
EXPOSE 8080
# Liveness only; docker-compose.yaml checks /ready (shards and broker reachable).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["shardwallet"]
CMD ["serve"]
