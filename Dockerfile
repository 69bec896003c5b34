# Multi-stage build: compile in the Rust image, run in a slim Debian image as
# a non-root user. The default config is the quickstart (dev store, SQLite
# state under /var/lib/keygate), rewritten to listen on all interfaces inside
# the container. Mount your own TOML over /etc/keygate/keygate.toml for real use.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# jemalloc's build options (see src/allocator.rs).
COPY .cargo ./.cargo
COPY src ./src
COPY config ./config
RUN cargo build --release --locked && strip target/release/keygate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/keygate --create-home keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
COPY config /etc/keygate/examples
RUN sed -e 's/127\.0\.0\.1:8740/0.0.0.0:8740/' \
        -e 's/127\.0\.0\.1:8741/0.0.0.0:8741/' \
        -e 's#\./data/keygate\.db#/var/lib/keygate/keygate.db#' \
        /etc/keygate/examples/demo.toml > /etc/keygate/keygate.toml
USER keygate
WORKDIR /var/lib/keygate
VOLUME /var/lib/keygate
EXPOSE 8740 8741
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve", "--config", "/etc/keygate/keygate.toml"]
