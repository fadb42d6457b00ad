# syntax=docker/dockerfile:1
# Palisade connector image. Build from the repository root:
#   docker build -f deploy/docker/connector.Dockerfile -t palisade-connector .
# Runs as the distroless `nonroot` user (65532) with no shell. It listens on
# nothing: it dials out to the broker and to its upstreams.
# Enroll once into the state volume, then run:
#   docker run --rm -v pc-state:/var/lib/palisade-connector -e PALISADE_ENROLL_TOKEN=pal1.… \
#       palisade-connector enroll --broker https://broker.example.com:8443
#   docker run -d -v pc-state:/var/lib/palisade-connector -v ./connector.toml:/etc/palisade/connector.toml:ro \
#       palisade-connector

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p palisade-connector --bin palisade-connector \
 && install -D -m 0755 target/release/palisade-connector /out/palisade-connector \
 && install -d -m 0700 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/palisade-connector /usr/bin/palisade-connector
# An empty state directory owned by the runtime user, so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/state /var/lib/palisade-connector
USER 65532:65532
ENV PALISADE_CONNECTOR_STATE_DIR=/var/lib/palisade-connector \
    PALISADE_CONNECTOR_CONFIG=/etc/palisade/connector.toml \
    PALISADE_LOG=info
VOLUME ["/var/lib/palisade-connector"]
ENTRYPOINT ["/usr/bin/palisade-connector"]
CMD ["run"]
