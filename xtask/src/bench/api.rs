//! Level 5: API responsiveness — `GET /` round trips over squib's Firecracker API socket while
//! the guest saturates its disk, against the same with the guest at queue depth 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::Context;
use super::device_path::disk_image;
use super::level::{Better, Figure, Level, Verdict};
use super::stats::percentile;
use super::vm::Vm;
use super::vmm::{Disk, Engine, Spec, Vmm};

const TITLE: &str = "API responsiveness";
const GOAL: &str = "`GET /` p99 ≤ 5 ms while the guest saturates the disk";
const P99_GOAL_MS: f64 = 5.0;
const MEM_MIB: u64 = 128;
const LOADED_CMDLINE: &str =
    "console=ttyS0 guest.bench=randread guest.qd=32 guest.ops=1000000000 guest.completion=poll";
/// The baseline: the test guest has no idle mode, so its lightest load, one read at a time.
const LIGHT_CMDLINE: &str =
    "console=ttyS0 guest.bench=randread guest.qd=1 guest.ops=1000000000 guest.completion=irq";

pub fn run(ctx: &Context) -> Level {
    match measure(ctx) {
        Ok(level) => level,
        Err(reason) => Level::unavailable(5, TITLE, GOAL, reason),
    }
}

fn measure(ctx: &Context) -> Result<Level, String> {
    ctx.squib()?;
    let disk = disk_image(ctx)?;
    let (runs, requests) = if ctx.quick { (1, 200) } else { (3, 2000) };
    let mut light = (Vec::new(), Vec::new());
    let mut loaded = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let disk = Disk {
            path: &disk,
            direct: false,
        };
        let (p50, p99) = latencies(ctx, LIGHT_CMDLINE, disk, requests)?;
        light.0.push(p50);
        light.1.push(p99);
        let (p50, p99) = latencies(ctx, LOADED_CMDLINE, disk, requests)?;
        loaded.0.push(p50);
        loaded.1.push(p99);
    }
    let mut figures = Vec::new();
    for (name, index) in [("p50", 0), ("p99", 1)] {
        let pick = |pair: &(Vec<f64>, Vec<f64>)| {
            if index == 0 {
                pair.0.clone()
            } else {
                pair.1.clone()
            }
        };
        let base = Figure::of(
            format!("api.light.{name}"),
            format!("GET / {name}, guest at QD 1 (light load)"),
            "ms",
        )
        .samples(&pick(&light), Better::Lower);
        let busy = Figure::of(
            format!("api.loaded.{name}"),
            format!("GET / {name}, guest saturating the disk"),
            "ms",
        )
        .samples(&pick(&loaded), Better::Lower)
        .map(|f| match &base {
            Some(base) => f.against(base),
            None => f,
        });
        figures.extend(busy);
        figures.extend(base);
    }
    let p99 = figures
        .iter()
        .find(|f| f.id == "api.loaded.p99")
        .map(|f| f.value.median);
    let verdict = match p99 {
        Some(ms) if ms <= P99_GOAL_MS => Verdict::Met(format!("p99 {ms:.2} ms under load")),
        Some(ms) => Verdict::NotMet(format!("p99 {ms:.2} ms under load")),
        None => Verdict::Unavailable("no latencies measured".into()),
    };
    let notes = vec![format!(
        "Method: {runs} runs of {requests} sequential `GET /` requests on one keep-alive \
         connection to the API socket (squib started as Firecracker is, `--api-sock` \
         and `--config-file`), timed on the host; p50/p99 per run, the figure is the median \
         over runs. Load: the test guest's random-read loop (`{LOADED_CMDLINE}`) on the 512 MiB \
         image, async engine; the requests start at its `BENCH start` line. Baseline: the same \
         with `{LIGHT_CMDLINE}` (the test guest has no idle mode)."
    )];
    Ok(Level {
        number: 5,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    })
}

/// Boots squib with an API socket, waits for `BENCH start`, then times `requests` GETs:
/// (p50, p99) in ms.
fn latencies(
    ctx: &Context,
    cmdline: &str,
    disk: Disk,
    requests: usize,
) -> Result<(f64, f64), String> {
    let socket = ctx.scratch()?.join("api.sock");
    let _ = std::fs::remove_file(&socket);
    let spec = Spec {
        cmdline,
        mem_mib: MEM_MIB,
        disk: Some(disk),
        boot_timer: false,
        api_sock: Some(&socket),
    };
    let vmm = Vmm::Squib(Engine::Async);
    let mut vm = Vm::spawn(vmm.command(ctx, &spec)?)?;
    vm.wait_for_marker("BENCH start", Duration::from_secs(30))?;
    let mut client = Client::connect(&socket)?;
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        client.get("/")?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    vm.kill();
    let p = |q| percentile(&samples, q).unwrap_or(f64::NAN);
    Ok((p(50.0), p(99.0)))
}

/// A minimal HTTP/1.1 client for the API socket: one connection, reconnecting if closed.
pub(super) struct Client<'a> {
    path: &'a Path,
    stream: BufReader<UnixStream>,
}

impl<'a> Client<'a> {
    pub(super) fn connect(path: &'a Path) -> Result<Client<'a>, String> {
        Ok(Client {
            path,
            stream: BufReader::new(Self::open(path)?),
        })
    }

    fn open(path: &Path) -> Result<UnixStream, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return Ok(stream),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    }

    fn get(&mut self, uri: &str) -> Result<(), String> {
        self.request("GET", uri, "").map(|_| ())
    }

    /// One request; returns the status code.
    pub(super) fn request(&mut self, method: &str, uri: &str, body: &str) -> Result<u16, String> {
        match self.exchange(method, uri, body) {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.stream = BufReader::new(Self::open(self.path)?);
                }
                Ok(status)
            }
            Err(e) => Err(format!("{method} {uri}: {e}")),
        }
    }

    /// Sends one request and reads its response; returns the status code and whether the
    /// connection stays open.
    fn exchange(&mut self, method: &str, uri: &str, body: &str) -> std::io::Result<(u16, bool)> {
        let request = format!(
            "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        if self.stream.read_line(&mut status)? == 0 || !status.starts_with("HTTP/1.") {
            return Err(std::io::Error::other(format!("bad status line {status:?}")));
        }
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut length, mut keep_alive) = (0usize, true);
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "connection" => keep_alive = !value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok((code, keep_alive))
    }
}
