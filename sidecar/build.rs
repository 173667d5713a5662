//! Link-time layout of the sidecar binary, for resident memory (bench/README.md, "RSS idle").
//!
//! - `--symbol-ordering-file=link-order.txt`: the functions a sidecar runs come first, together.
//!   The kernel maps code 64 KiB around each page a process touches, so scattered hot functions
//!   make most of the binary resident; grouped, they are all it maps. `bench/link-order.sh`
//!   regenerates the file; names it lists that no longer exist are ignored.
//! - `-z pack-relative-relocs` (DT_RELR): the loader's ~400 KB of relative relocations shrink to
//!   a few KB, which it reads at every start. Needs glibc 2.36 or newer where the binary runs
//!   (the image's base, Debian 12, has it).
//!
//! Both are for optimised builds on x86_64 Linux with glibc, where Rust links with its own lld;
//! with another linker (a `linker` or `linker-features` setting) the build is left as it is.
//! `CAUSEWAY_PLAIN_LINK=1` turns both off.
#![forbid(unsafe_code)]

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    for var in ["CAUSEWAY_PLAIN_LINK", "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER", "RUSTC_LINKER", "RUSTFLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let var = |name: &str| env::var(name).unwrap_or_default();
    let linux_gnu_x86_64 = var("TARGET") == "x86_64-unknown-linux-gnu";
    let optimised = var("PROFILE") == "release";
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    // Cargo tells build scripts about a configured linker in RUSTC_LINKER.
    let own_linker = env::var_os("RUSTC_LINKER").is_some()
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || ["linker=", "linker-features", "link-self-contained", "linker-flavor"].iter().any(|f| rustflags.contains(f));
    if !linux_gnu_x86_64 || !optimised || var("CAUSEWAY_PLAIN_LINK") == "1" {
        return;
    }
    if own_linker {
        println!(
            "cargo:warning=a linker of your own is set: the sidecar is linked without its function order (more resident memory; see bench/README.md)"
        );
        return;
    }
    let order = format!("{}/link-order.txt", var("CARGO_MANIFEST_DIR"));
    for arg in [
        format!("-Wl,--symbol-ordering-file={order}"),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
        "-Wl,-z,pack-relative-relocs".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bin=causeway-sidecar={arg}");
    }
}
