//! Links the system test suite as a Keel user program: the shared user
//! linker script (`user/linker.ld`), static and non-PIE, 4 KiB segment
//! alignment. Host builds (clippy, `cargo test`) link a stub and need none.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed={dir}/../linker.ld");
    if os == "none" {
        println!("cargo:rustc-link-arg-bins=-T{dir}/../linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
}
