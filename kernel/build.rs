//! Chooses the linker script for the architecture being built. Host builds
//! (unit tests, clippy) link no kernel image and need none.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rerun-if-changed=src/arch");
    if os == "none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/src/arch/{arch}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
