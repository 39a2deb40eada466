# One image with every usersync binary; docker-compose.yml picks the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/usersync /src/target/release/usersync-fetcher \
     /src/target/release/usersync-differ /src/target/release/usersync-applier \
     /src/target/release/usersync-notifier /src/target/release/usersync-api \
     /src/target/release/usersync-graph-sim \
     /src/target/release/usersync-pbx-sim /usr/local/bin/
COPY examples /usr/share/usersync/examples
USER nobody
