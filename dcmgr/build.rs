// `sqlx::migrate!` embeds dcmgr/migrations at compile time; without this, cargo does not
// rebuild when only a migration is added (what `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
