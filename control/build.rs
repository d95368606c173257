//! Rebuilds the crate when a migration is added, changed or removed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and Cargo does not see a new file there by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
