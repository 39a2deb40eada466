//! The live preview: what the next sync would do with the settings as they
//! stand (saved or not), from the directory as it is now — read from Graph,
//! planned with the planner's own functions against the stored applied state,
//! and written nowhere (no directory or sync table, no delta link, no PBX
//! call, no mail). `usersync plan --live` prints it; the API runs it in the
//! background ([`start_preview`]) and answers for it from any replica
//! ([`get_preview`]).

mod directory;
mod jobs;
mod plan;

pub use directory::{read_directory, LiveDirectory, Progress};
pub use jobs::{
    get_preview, settings_hash, start_preview, PreviewError, PreviewPage, PreviewReport, MAX_PAGE,
};
pub use plan::{plan_live, LinePage, LivePlan};
