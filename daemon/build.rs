//! Builds sonde's eBPF object (crate `sonde-ebpf`) for the BPF target with aya-build, so that
//! `sonded` embeds programs that always match its own source.
//!
//! Needs the nightly toolchain with `rust-src` and `bpf-linker`: `cargo xtask setup` installs
//! both.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let bpf_linker = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|dir| dir.join("bpf-linker").is_file())
    });
    if bpf_linker.is_none() && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it installs bpf-linker and the \
             nightly rust-src that the eBPF build needs)"
        ));
    }
    let package = aya_build::Package {
        name: "sonde-ebpf",
        root_dir: "../ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF object (crate sonde-ebpf) failed")
}
