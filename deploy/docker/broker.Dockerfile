# syntax=docker/dockerfile:1
# Palisade broker image. Build from the repository root:
#   docker build -f deploy/docker/broker.Dockerfile -t palisade-broker .
# Runs as the distroless `nonroot` user (65532) with no shell; the data
# directory /var/lib/palisade must be writable by that uid (a volume).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p palisade-broker --bin palisade-broker \
 && install -D -m 0755 target/release/palisade-broker /out/palisade-broker \
 && install -d -m 0700 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/palisade-broker /usr/bin/palisade-broker
# An empty state directory owned by the runtime user, so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /out/state /var/lib/palisade
USER 65532:65532
WORKDIR /var/lib/palisade
VOLUME ["/var/lib/palisade"]
# HTTPS (TCP) and QUIC (UDP) share the port.
EXPOSE 8443/tcp 8443/udp
ENV PALISADE_LOG=info
ENTRYPOINT ["/usr/bin/palisade-broker"]
CMD ["run", "--data-dir", "/var/lib/palisade"]
