//! Client of the PBX ("Infinity") user REST API.
//!
//! Each method is exactly one HTTP request. Failures are classified in
//! [`PbxError`] so callers can decide whether to retry, re-read, adopt or
//! report; this crate never retries on its own.

pub mod answer;
mod client;
mod error;
mod model;
mod target;

pub use answer::{Answer, Shape};
pub use client::PbxClient;
pub use error::{PbxError, PbxErrorKind};
pub use model::{Items, NewUser, Number, PbxUser, Template, UserFilter, UsersPage};
pub use target::PbxTarget;
