//! `sondectl report` opened in headless Chromium (Debian's `chromium`, installed by `cargo
//! xtask setup`): every section present, no console error, no network request (Chromium is
//! pointed at a proxy that records whatever it is asked for), a screenshot of each section
//! (the page shows a section alone at its `#id`) that is not blank; and a run-set of a
//! thousand measurements reported quickly and compactly.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sonde_ctl::report::SECTIONS;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn sondectl(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args(args)
        .output()
        .expect("run sondectl");
    assert!(
        output.status.success(),
        "sondectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A proxy that answers nothing and remembers the first line of every request it gets.
fn proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            if let Ok(mut seen) = record.lock() {
                seen.push(line.trim().to_owned());
            }
        }
    });
    (port, seen)
}

/// Chromium opens `url` headless and screenshots it into `png`; returns its stderr.
fn chromium(url: &str, png: &Path, proxy_port: u16) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,AutofillServerCommunication,SignInProfileCreation",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--proxy-server=http://127.0.0.1:{proxy_port}"),
            // Loopback too: nothing may be fetched from anywhere.
            "--proxy-bypass-list=<-loopback>",
            "--window-size=920,1400",
            &format!("--screenshot={}", png.display()),
            url,
        ])
        .output()
        .expect("chromium is installed by `cargo xtask setup`");
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The share of a screenshot's pixels that are not white, below its first `skip` rows (the
/// page's title and navigation).
fn inked(png: &Path, skip: usize) -> f64 {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(png).expect("png")));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buffer).expect("a frame");
    let channels = info.color_type.samples();
    let row = info.width as usize * channels;
    let pixels = &buffer[(skip * row).min(info.buffer_size())..info.buffer_size()];
    let inked = pixels
        .chunks(channels)
        .filter(|pixel| pixel.iter().take(3).any(|&c| c < 235))
        .count();
    inked as f64 / (pixels.len() / channels) as f64
}

#[test]
fn a_report_opens_offline_with_every_section_drawn() {
    let dir = scratch("sections");
    let html = dir.join("report.html");
    let html_arg = html.to_string_lossy().into_owned();
    // Two payload sweeps (pod IP and Service, with timelines), a traced run, a mesh run-set,
    // and the pod-IP sweep again as the baseline.
    sondectl(&[
        "report",
        &fixture("run-sweep-pod-ip.json"),
        &fixture("run-sweep-service.json"),
        &fixture("run-tcp-rr.json"),
        &fixture("run-set-mesh.json"),
        "--baseline",
        &fixture("run-sweep-pod-ip.json"),
        "-o",
        &html_arg,
    ]);
    let page = std::fs::read_to_string(&html).expect("report");
    for (id, _) in SECTIONS {
        assert!(
            page.contains(&format!("<section id=\"{id}\">")),
            "no {id} section"
        );
    }
    // Everything inline: no script, no import, and no address but the SVG namespace's.
    for forbidden in ["<script", "@import", "src="] {
        assert!(!page.contains(forbidden), "{forbidden} in the report");
    }
    let addresses = page.matches("http").count();
    let namespaces = page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(
        addresses, namespaces,
        "an address in the report besides the SVG namespace"
    );
    // Drawn, not left with their "nothing to show" notes.
    for (id, _) in SECTIONS {
        let start = page
            .find(&format!("<section id=\"{id}\">"))
            .expect("section");
        let end = page[start..].find("</section>").expect("end") + start;
        let body = &page[start..end];
        let drawn = body.contains("<svg") || (id == "summary" && body.contains("<table"));
        assert!(
            drawn,
            "section {id} has nothing drawn: {}",
            &body[..body.len().min(400)]
        );
    }
    let (port, requests) = proxy();
    for (id, _) in SECTIONS {
        let png = dir.join(format!("{id}.png"));
        let log = chromium(&format!("file://{}#{id}", html.display()), &png, port);
        let errors: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("CONSOLE") || line.contains("Failed to load"))
            .collect();
        assert!(errors.is_empty(), "#{id}: {errors:#?}");
        let ink = inked(&png, 200);
        println!("#{id}: {:.1}% of the section drawn", ink * 100.0);
        assert!(ink > 0.005, "#{id}: the screenshot is blank ({ink})");
    }
    // Chromium's own services (component updates, accounts) call home whatever the page; the
    // page itself may ask for nothing.
    let own = [
        "update.googleapis.com",
        "accounts.google.com",
        "clients2.google.com",
    ];
    let requests: Vec<String> = requests
        .lock()
        .expect("requests")
        .iter()
        .filter(|line| !own.iter().any(|host| line.contains(host)))
        .cloned()
        .collect();
    assert!(
        requests.is_empty(),
        "the report made requests: {requests:?}"
    );
}

#[test]
fn a_thousand_measurement_run_set_reports_in_seconds_and_under_five_megabytes() {
    let dir = scratch("thousand");
    // The mesh fixture's record, made a traced tcp-rr (the rr fixture's run: two repetitions
    // with histograms and kernel stages), over 32 nodes' 992 ordered pairs and 8 more.
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture(name)).expect("fixture"))
            .expect("JSON")
    };
    let mut set = read("run-set-mesh.json");
    let mut template = set["measurements"][0].clone();
    template["results"] = serde_json::json!([read("run-tcp-rr.json")]);
    template["kind"] = "tcp-rr".into();
    template["test"] = "tcp-rr".into();
    let nodes: Vec<String> = (1..=32).map(|n| format!("node{n}")).collect();
    let mut records = Vec::new();
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut record = template.clone();
            record["id"] = records.len().into();
            record["from_node"] = from.as_str().into();
            record["to_node"] = to.as_str().into();
            record["key"] = format!("tcp-rr|pod-ip|{from}->{to}").into();
            record["headline"]["p50_ns"] = (50_000 + i * 370 + j * 110).into();
            records.push(record);
        }
    }
    for k in 0..8 {
        let mut record = records[k].clone();
        record["id"] = records.len().into();
        records.push(record);
    }
    assert_eq!(records.len(), 1000);
    set["measurements"] = records.into();
    set["plan"]["nodes"] = nodes.into();
    let input = dir.join("set.json");
    std::fs::write(&input, set.to_string()).expect("write");
    let html = dir.join("report.html");
    let started = Instant::now();
    sondectl(&[
        "report",
        &input.to_string_lossy(),
        "-o",
        &html.to_string_lossy(),
    ]);
    let took = started.elapsed();
    let size = std::fs::metadata(&html).expect("report").len();
    println!(
        "1000 measurements: reported in {took:?}, {:.2} MB",
        size as f64 / 1e6
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(size < 5_000_000, "{size} bytes");
    let page = std::fs::read_to_string(&html).expect("report");
    assert!(page.contains("node32"), "the heatmap has every node");
    // Two repetitions each: 2000 measurements, of which it says what it drew.
    assert!(page.contains("48 of 2000 measurements, the highest p99 first"));
    assert!(page.contains("The first 12 of 2000 traced measurements"));
}
