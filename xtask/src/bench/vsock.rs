//! Level 7: virtio-vsock without KVM — the criterion bench `vsock`.
//!
//! A simulated guest driver feeds the device's queues; the other end of each connection is a
//! host thread on a real Unix socket. Throughput both ways and the connect round trip are set
//! against a host-only Unix-socket copy loop and a host `connect(2)` measured in the same run.
//! QEMU's `vhost-vsock-device` would be the peer where `/dev/vhost-vsock` exists; the level says
//! whether it does (it does not on the project's machine, so no QEMU figure is taken).

use std::path::Path;

use super::Context;
use super::criterion::{self, Measurement};
use super::level::{Better, Figure, Level, Verdict};

const TITLE: &str = "virtio-vsock without KVM (criterion `vsock`)";
const GOAL: &str = "guest→host and host→guest throughput ≥ 0.5× a host-only Unix-socket copy loop";
const GOAL_RATIO: f64 = 0.5;

pub fn run(ctx: &Context) -> Level {
    match criterion::run(ctx, "vsock") {
        Ok(run) => level(&run.measurements),
        Err(reason) => Level::unavailable(7, TITLE, GOAL, reason),
    }
}

fn mib_per_second(m: &Measurement) -> Vec<f64> {
    m.per_second()
        .iter()
        .map(|b| b / f64::from(1 << 20))
        .collect()
}

fn us_per_connect(m: &Measurement) -> Vec<f64> {
    m.ns_per_element().iter().map(|ns| ns / 1e3).collect()
}

fn level(measurements: &[Measurement]) -> Level {
    let find = |id: &str| measurements.iter().find(|m| m.id == id);
    let figure = |id: &str,
                  key: &str,
                  label: &str,
                  unit: &'static str,
                  per: fn(&Measurement) -> Vec<f64>,
                  better| {
        find(id).and_then(|m| Figure::of(key, label, unit).samples(&per(m), better))
    };
    let Some(copy) = figure(
        "vsock/host_only/copy",
        "vsock.host-only.copy",
        "host-only Unix-socket copy (1 MiB, 64 KiB writes)",
        "MiB/s",
        mib_per_second,
        Better::Higher,
    ) else {
        return Level::unavailable(
            7,
            TITLE,
            GOAL,
            "the bench reported no host-only copy".into(),
        );
    };
    let mut figures = Vec::new();
    let mut verdicts = Vec::new();
    let mut failures = Vec::new();
    for (id, key, label) in [
        (
            "vsock/device/guest_to_host",
            "vsock.guest-to-host",
            "guest → host (64 KiB packets)",
        ),
        (
            "vsock/device/host_to_guest",
            "vsock.host-to-guest",
            "host → guest (4 KiB rx buffers)",
        ),
    ] {
        let Some(f) = figure(id, key, label, "MiB/s", mib_per_second, Better::Higher) else {
            failures.push(format!("no `{id}`"));
            continue;
        };
        let f = f.against(&copy);
        let ratio = f.ratio.as_ref().map_or(0.0, |r| r.value);
        verdicts.push(format!("{label}: {ratio:.2}×"));
        if ratio < GOAL_RATIO {
            failures.push(format!("{label} at {ratio:.2}×"));
        }
        figures.push(f);
    }
    figures.push(copy);
    let host_connect = figure(
        "vsock/host_only/connect",
        "vsock.host-only.connect",
        "host-only connect(2)",
        "µs",
        us_per_connect,
        Better::Lower,
    );
    if let Some(device) = figure(
        "vsock/device/connect",
        "vsock.connect",
        "guest connect round trip (REQUEST → RESPONSE)",
        "µs",
        us_per_connect,
        Better::Lower,
    ) {
        figures.push(match &host_connect {
            Some(host) => device.against(host),
            None => device,
        });
    }
    figures.extend(host_connect);
    let summary = verdicts.join(", ");
    let verdict = if failures.is_empty() {
        Verdict::Met(summary)
    } else if verdicts.is_empty() {
        Verdict::NotMet(failures.join(", "))
    } else {
        Verdict::NotMet(summary)
    };
    let vhost = if Path::new("/dev/vhost-vsock").exists() {
        "/dev/vhost-vsock exists on this machine, but this level does not run QEMU's \
         vhost-vsock-device yet."
    } else {
        "/dev/vhost-vsock does not exist on this machine, so there is no QEMU \
         vhost-vsock-device figure."
    };
    Level {
        number: 7,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes: vec![
            "Method: `cargo bench -p squib-benches --bench vsock`: a simulated driver feeds the \
             vsock device through the virtio-mmio transport; the host end of the connection is a \
             thread on a real Unix socket. Guest → host sends 1 MiB as 64 KiB RW packets within \
             the device's credit until the host thread has read it; host → guest has the host \
             thread write 1 MiB that the guest takes in 4 KiB rx buffers, copying each payload \
             once to its reader's buffer and returning credit every 64 KiB. Like Linux's driver, \
             the guest skips the tx kick while the device has notifications off \
             (VRING_USED_F_NO_NOTIFY). The baseline copies 1 MiB between two host threads over a \
             socket pair. No VM exits are involved: on KVM every queue notification adds an \
             ioeventfd exit."
                .to_owned(),
            vhost.to_owned(),
        ],
    }
}
