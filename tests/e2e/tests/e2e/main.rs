//! End-to-end tests, one binary: each test runs a whole stack (see `usersync_e2e::Stack`).

mod api;
mod applier;
mod differ;
mod fetcher;
mod notifications;
mod notifier;
mod operations;
mod operator;
mod page;
mod pipeline;
mod preview;
mod support;
