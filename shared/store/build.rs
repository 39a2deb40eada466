//! The migrations are embedded at compile time (`refinery::embed_migrations!`):
//! a migration added, changed or removed must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
