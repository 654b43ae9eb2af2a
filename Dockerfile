# Build stage: a release binary. Run stage: the binary alone on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY jobs ./jobs
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin ferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
EXPOSE 8080
ENTRYPOINT ["ferry"]
CMD ["serve"]
