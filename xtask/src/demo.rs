//! `cargo xtask demo`: sonde's main job for a newcomer, on this machine alone.
//!
//! Sets the machine up, builds, starts `sonded` on loopback, asks it with `sondectl nodes` what
//! it found on this kernel, then stops it with SIGTERM and shows that it left nothing loaded.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    shell::{self, step},
};

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    if !shell::is_root() {
        bail!("sonded loads eBPF programs and needs root: run `sudo -E cargo xtask demo`");
    }
    if !setup::is_complete() {
        setup::run()?;
    }
    step("build sonded and sondectl");
    shell::run("cargo", &["build", "--bins"])?;
    let bin = root.join("target/debug");

    step("start sonded on loopback (it probes this kernel's eBPF capabilities)");
    let mut daemon = Command::new(bin.join("sonded"))
        .args(["--listen", "127.0.0.1:0", "--node-name", "demo"])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting sonded")?;
    let stderr = daemon.stderr.take().context("sonded's stderr")?;
    let (addr_tx, addr_rx) = mpsc::channel();
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("    sonded | {line}");
            if let Some(addr) = line
                .split("addr=")
                .nth(1)
                .filter(|_| line.contains("serving"))
            {
                let _ = addr_tx.send(addr.trim().to_owned());
            }
        }
    });
    let Ok(addr) = addr_rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = daemon.kill();
        bail!("sonded did not start serving within 30s (its log is above)");
    };

    let sondectl = bin.join("sondectl");
    let sondectl = sondectl.to_string_lossy();
    step(&format!("sondectl nodes --agents {addr}"));
    let shown = shell::run(&sondectl, &["nodes", "--agents", &addr]);
    if shown.is_ok() {
        step(&format!(
            "the same as JSON: sondectl nodes --agents {addr} -o json"
        ));
    }
    let shown =
        shown.and_then(|()| shell::run(&sondectl, &["nodes", "--agents", &addr, "-o", "json"]));

    step("stop sonded (SIGTERM): it detaches and unloads everything");
    shell::run("kill", &["-TERM", &daemon.id().to_string()])?;
    let status = daemon.wait().context("waiting for sonded")?;
    let _ = echo.join();
    shown?;
    if !status.success() {
        bail!("sonded exited with {status}");
    }
    let leftovers = shell::output("bpftool", &["prog", "show"])
        .map(|list| {
            list.lines()
                .filter(|line| line.contains("name sonde_"))
                .count()
        })
        .unwrap_or(0);
    if leftovers > 0 {
        bail!("{leftovers} sonde programs are still loaded after sonded stopped");
    }
    step("done: sonded stopped and no sonde program is left in the kernel");
    Ok(())
}
