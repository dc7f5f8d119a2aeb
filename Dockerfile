# Palisade: a release build, then a small runtime image with only the binary.
#
#   docker build -t palisade .
#   cp .env.example .env    # then edit: ALLOWED_ORIGINS, JWT_DECODE_SECRET or an IdP, REDIS_URL
#   docker run --env-file .env -p 8080:8080 -p 9090:9090 palisade
#
# The image listens on 0.0.0.0 (BIND_ADDR) so that a published port reaches it; PORT and
# METRICS_PORT are whatever .env says (8080 and 9090 by default).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The demo page and JS client are compiled into the binary.
COPY clients ./clients
# The registry and target directories are build caches, not image layers; the binary is
# copied out of the cache before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin palisade \
    && cp target/release/palisade /usr/local/bin/palisade

# glibc, libgcc and CA certificates (for identity providers' JWKS over HTTPS), no shell, and
# a non-root user (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/palisade /usr/local/bin/palisade
ENV BIND_ADDR=0.0.0.0 \
    PORT=8080 \
    METRICS_PORT=9090 \
    LOG_FORMAT=json
USER 65532:65532
# 8081: the server API (API_PORT), served only when API_KEYS or another credential is set.
EXPOSE 8080 8081 9090
# `palisade healthcheck` GETs /healthz on PORT: the image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/palisade", "healthcheck"]
# SIGTERM starts the drain (DRAIN_DELAY_SECS, then 1001 to every socket, within
# SHUTDOWN_GRACE_SECS): give `docker stop -t` more than SHUTDOWN_GRACE_SECS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["serve"]
