//! `cargo xtask setup`: everything a fresh Debian machine of our kind needs, installed
//! non-interactively, each step skipped when already done.
//!
//! 1. Debian packages: the tools the lab, the tests and the benchmarks use.
//! 2. `rust-src` for the nightly toolchain (the eBPF crate is built with `-Z build-std=core`).
//! 3. `bpf-linker`, linked against the nightly toolchain's own LLVM (Debian's LLVM is too old
//!    for the bitcode nightly rustc emits): a directory of two symlinks to nightly's
//!    `libLLVM.so` stands in for an LLVM install, as `LLVM_PREFIX` (see shared/toolchain.md).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::shell::{self, output, step};

/// Debian packages sonde needs, and why.
const PACKAGES: &[(&str, &str)] = &[
    (
        "iproute2",
        "ip: namespaces, veths, bridges, routes, tc qdiscs (lab and tests)",
    ),
    (
        "nftables",
        "nft: ClusterIP Services as DNAT rules in the lab",
    ),
    (
        "conntrack",
        "conntrack: inspecting the lab's connection tracking in tests",
    ),
    (
        "bpftool",
        "bpftool: inspecting loaded programs and links when debugging",
    ),
    ("procps", "sysctl: per-namespace settings in tests"),
    ("iperf3", "reference tool for benchmarks and lab checks"),
    ("qperf", "reference tool for latency benchmarks"),
    ("wrk", "reference tool for HTTP benchmarks"),
    (
        "protobuf-compiler",
        "protoc: generating the sonde.v1 gRPC code",
    ),
    (
        "prometheus",
        "a real Prometheus (and promtool) scraping the monitor and the Pushgateway in tests",
    ),
    (
        "prometheus-pushgateway",
        "a real Pushgateway receiving scenario results in tests",
    ),
    (
        "graphite-carbon",
        "a real carbon-cache receiving Graphite lines in tests (whisper-fetch reads them back)",
    ),
    (
        "dnsmasq-base",
        "a real DNS server (not sonde's) that dns runs measure in tests",
    ),
    (
        "ca-certificates",
        "the CA bundle sonded's image carries (kube's TLS stack will not start without one)",
    ),
    (
        "buildah",
        "building sonded's image offline, from scratch (cargo xtask image, tests/image.rs)",
    ),
    (
        "podman",
        "running sonded's image as the DaemonSet specifies it (tests/image.rs)",
    ),
    (
        "runc",
        "podman's runtime on hosts with hybrid cgroups, which crun refuses",
    ),
    (
        "python3-grpcio",
        "an independent gRPC client (grpcio, C core) refused or served by sonded's mutual TLS in tests",
    ),
    (
        "chromium",
        "headless Chromium opening sondectl's HTML reports in tests (offline, screenshots)",
    ),
];

/// The bpf-linker release known to build against nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("sonde needs Linux (eBPF, network namespaces); this is not Linux");
    }
    if !shell::is_root() {
        bail!(
            "setup installs system packages and needs root: run it as root (e.g. `sudo -E cargo \
             xtask setup`)"
        );
    }
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    step("setup complete");
    Ok(())
}

/// Whether everything setup installs is present (cheap: no network, no root needed).
pub fn is_complete() -> bool {
    missing_packages().is_empty()
        && has_rust_src()
        && bpf_linker_matches_nightly()
        && has_cargo_fuzz()
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            output("dpkg-query", &["-W", "-f=${Status}", name])
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect()
}

fn apt_packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    step(&format!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    for (name, why) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        println!("    {name}: {why}");
    }
    shell::run("apt-get", &["update", "-q"])
        .context("cannot reach Debian's package registry (apt-get update failed)")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    shell::run("apt-get", &args).context("installing Debian packages failed")
}

fn has_rust_src() -> bool {
    output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|list| list.lines().any(|line| line.starts_with("rust-src")))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    if output("rustc", &["+nightly", "--version"]).is_none() {
        bail!(
            "the nightly Rust toolchain is missing: install it with `rustup toolchain install \
             nightly --component rust-src` (the eBPF crate needs it)"
        );
    }
    if has_rust_src() {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing");
    shell::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
    .context("installing rust-src for nightly failed (is the Rust distribution server reachable?)")
}

/// Nightly's bundled LLVM: the shared library's file name and the LLVM major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("asking nightly rustc for its sysroot")?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;
    let version = output("rustc", &["+nightly", "-vV"]).context("nightly rustc -vV")?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not say its LLVM version")?
        .to_owned();
    Ok((library, major))
}

/// bpf-linker answers and loads exactly nightly's LLVM library (it breaks silently when
/// nightly is updated under it).
fn bpf_linker_matches_nightly() -> bool {
    let Some(path) = output("sh", &["-c", "command -v bpf-linker"]) else {
        return false;
    };
    let Ok((library, _)) = nightly_llvm() else {
        return false;
    };
    let Some(library_name) = library.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    output("ldd", &[path.trim()]).is_some_and(|deps| {
        deps.lines()
            .any(|line| line.contains(library_name) && !line.contains("not found"))
    }) && output("bpf-linker", &["--version"]).is_some()
}

/// The cargo-fuzz release `cargo xtask fuzz` is run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Whether cargo-fuzz is installed, in the version the fuzz targets are run with.
pub fn has_cargo_fuzz() -> bool {
    output("cargo", &["fuzz", "--version"])
        .is_some_and(|version| version.contains(CARGO_FUZZ_VERSION))
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if has_cargo_fuzz() {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step(&format!(
        "cargo-fuzz {CARGO_FUZZ_VERSION}: building (about three minutes; the targets run on nightly)"
    ));
    shell::run(
        "cargo",
        &[
            "+stable",
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
        ],
    )
    .context("installing cargo-fuzz from crates.io failed: is crates.io reachable?")
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_matches_nightly() {
        step("bpf-linker: present, linked against nightly's LLVM");
        return Ok(());
    }
    let (library, major) = nightly_llvm()?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    // Must stay where it is: bpf-linker records this directory as its RUNPATH.
    let shim = PathBuf::from(home).join(format!(".local/share/bpf-linker-llvm{major}"));
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against nightly's LLVM {major} (about a minute)"
    ));
    let lib_dir = shim.join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let library_name = library
        .file_name()
        .context("LLVM library has no file name")?;
    for link in [lib_dir.join(library_name), lib_dir.join("libLLVM.so")] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    let features = format!("llvm-{major}");
    let status = std::process::Command::new("cargo")
        .args([
            "+stable",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &features,
        ])
        .env("LLVM_PREFIX", &shim)
        .status()
        .context("starting cargo install")?;
    if !status.success() {
        bail!("installing bpf-linker from crates.io failed ({status}): is crates.io reachable?");
    }
    if !bpf_linker_matches_nightly() {
        bail!("bpf-linker was installed but does not load nightly's LLVM ({library_name:?})");
    }
    Ok(())
}
