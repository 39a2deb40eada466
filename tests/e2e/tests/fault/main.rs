//! The fault suite: each case runs the whole stack on a directory of a few
//! thousand users, injects one fault in the middle of the first run, lets the
//! run finish, runs again with some users removed, and passes only if the
//! audit (`usersync_e2e::Audit`) finds nothing lost, duplicated or left over.
//! Each case writes `target/fault-results/<case>.json`; `scripts/fault-suite`
//! runs every case (the ignored ones too) and writes docs/reliability.md.

mod audit_check;
mod backends;
mod case;
mod data;
mod graph;
mod kills;
mod messages;
mod pbx;
mod servers;
mod strike;
mod tenants;
