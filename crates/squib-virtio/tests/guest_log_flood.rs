//! A guest cannot flood the host log: every guest-triggered warning goes through one limiter.
//!
//! Its own test binary because the limiter is process-wide: other tests in the same process
//! would share its budget.
#![forbid(unsafe_code)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use squib_virtio::guest_log;
use squib_virtio::mmio::reg;
use tracing_subscriber::fmt::MakeWriter;

/// Collects formatted log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

const WRITES: u32 = 100_000;

#[test]
fn a_hundred_thousand_bad_register_writes_give_a_bounded_number_of_warnings() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let before = guest_log::suppressed_total();
    tracing::subscriber::with_default(subscriber, || {
        let mut rig = rig();
        let d = &mut rig.driver;
        let registers = [
            reg::QUEUE_NUM,
            reg::QUEUE_DESC_LOW,
            reg::QUEUE_READY,
            reg::STATUS,
            reg::DRIVER_FEATURES,
            reg::MAGIC_VALUE,
        ];
        for i in 0..WRITES {
            let offset = registers[i as usize % registers.len()];
            // STATUS: clearing bits without a reset; the others are refused after DRIVER_OK.
            let value = if offset == reg::STATUS { 1 } else { i };
            d.write_reg(offset, value);
        }
        // A mis-sized access too.
        d.transport().write(reg::QUEUE_SEL, &[1, 2]);
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        (1..=guest_log::BURST as usize).contains(&warnings),
        "{warnings} WARN lines for {WRITES} bad writes"
    );
    let suppressed = guest_log::suppressed_total() - before;
    assert!(
        suppressed >= u64::from(WRITES) + 1 - u64::from(guest_log::BURST),
        "only {suppressed} lines counted as suppressed"
    );
}
