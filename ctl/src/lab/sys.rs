//! System commands the lab is made with (`ip`, `tc`, `nft`), and what it reads back from the
//! system. iproute2 and nftables are the tools a CNI's own tests use; their errors are passed on
//! with the command that failed.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
};

use crate::error::{Context as _, refuse};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `program args` and returns its stdout; fails with the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> crate::Result<String> {
    run_with_input(program, args, None)
}

/// As [`run`], writing `input` to the command's stdin.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> crate::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup`)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !output.status.success() {
        refuse!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip -n NETNS args`.
pub fn ip_in(netns: &str, args: &[&str]) -> crate::Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Sets a sysctl inside a namespace (`/proc/sys` shows the namespace of the reader, so the
/// write goes through `ip netns exec`).
pub fn sysctl_in(netns: &str, key: &str, value: &str) -> crate::Result<()> {
    let setting = format!("{key}={value}");
    run(
        "ip",
        &["netns", "exec", netns, "sysctl", "-q", "-w", &setting],
    )
    .map(drop)
}

/// Named namespaces whose names start with `prefix`, sorted.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The inode that identifies a named namespace (what `/proc/PID/ns/net` links to).
pub fn netns_inode(name: &str) -> Option<u64> {
    std::fs::metadata(Path::new(NETNS_DIR).join(name))
        .ok()
        .map(|meta| meta.ino())
}

/// Processes whose network namespace is one of `inodes` (never this process).
pub fn processes_in(inodes: &[u64]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|link| {
                    let text = link.to_string_lossy().into_owned();
                    text.strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|inode| inodes.contains(&inode))
        })
        .collect()
}

/// Whether this process may create namespaces and load eBPF (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The MAC address of `dev` in `netns`, as `ip` prints it (aa:bb:cc:dd:ee:ff).
pub fn mac_of(netns: &str, dev: &str) -> crate::Result<String> {
    let json = ip_in(netns, &["-j", "link", "show", "dev", dev])?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| crate::Error::Refused(format!("no MAC address for {dev} in {netns}")))
}
