//! Rebuilds this crate when a file under the repository's `assets/` changes: `include_dir!`
//! embeds the folder, but cargo only watches the crate's own sources unless told.

fn main() {
    println!("cargo:rerun-if-changed=../../assets");
    println!("cargo:rerun-if-changed=src");
}
