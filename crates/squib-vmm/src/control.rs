//! The run state every vCPU thread obeys: run, park (pause) or stop.
//!
//! A controller changes the target, then kicks every vCPU out of `KVM_RUN`
//! (`squib_host::signals::kick`); each vCPU thread checks the target between two `KVM_RUN`s.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// What the VMM wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Run,
    Pause,
    Stop,
}

/// The microVM's state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// vCPUs are running the guest.
    Running,
    /// Pause asked for; some vCPUs have not parked yet.
    Pausing,
    /// Every vCPU is parked.
    Paused,
    /// The VM is stopping or stopped.
    Stopped,
}

#[derive(Debug)]
struct Inner {
    target: Target,
    /// vCPU threads still running their loop.
    alive: usize,
    /// vCPU threads parked.
    parked: usize,
}

/// Shared between the VMM, its handle and the vCPU threads.
#[derive(Debug)]
pub struct RunControl {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl RunControl {
    /// Control for `vcpus` vCPU threads, which start running.
    pub fn new(vcpus: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                target: Target::Run,
                alive: vcpus,
                parked: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Control for `vcpus` vCPU threads, which start parked until [`RunControl::resume`].
    pub fn new_held(vcpus: usize) -> Self {
        let control = Self::new(vcpus);
        control.lock().target = Target::Pause;
        control
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a vCPU thread between two `KVM_RUN`s: parks while paused; returns `false` when
    /// the thread must stop.
    pub fn may_run(&self) -> bool {
        let mut inner = self.lock();
        if inner.target == Target::Pause {
            inner.parked += 1;
            self.changed.notify_all();
            inner = self
                .changed
                .wait_while(inner, |i| i.target == Target::Pause)
                .unwrap_or_else(PoisonError::into_inner);
            inner.parked -= 1;
        }
        inner.target == Target::Run
    }

    /// Called by a vCPU thread when it leaves its loop for good.
    pub fn vcpu_exited(&self) {
        let mut inner = self.lock();
        inner.alive -= 1;
        self.changed.notify_all();
    }

    /// Asks the vCPUs to park; the caller then kicks them and calls [`RunControl::wait_parked`].
    /// Returns `false` if the VM is stopping.
    pub fn request_pause(&self) -> bool {
        let mut inner = self.lock();
        if inner.target == Target::Stop {
            return false;
        }
        inner.target = Target::Pause;
        true
    }

    /// Waits until every live vCPU is parked (or the VM stops).
    pub fn wait_parked(&self) {
        let inner = self.lock();
        let _parked = self
            .changed
            .wait_while(inner, |i| i.target == Target::Pause && i.parked < i.alive)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Lets parked vCPUs run again. Returns `false` if the VM is stopping.
    pub fn resume(&self) -> bool {
        let mut inner = self.lock();
        if inner.target == Target::Stop {
            return false;
        }
        inner.target = Target::Run;
        self.changed.notify_all();
        true
    }

    /// Tells every vCPU to stop (parked ones wake up and leave); the caller then kicks them.
    pub fn request_stop(&self) {
        let mut inner = self.lock();
        inner.target = Target::Stop;
        self.changed.notify_all();
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        let inner = self.lock();
        match inner.target {
            Target::Run => VmState::Running,
            Target::Pause if inner.parked >= inner.alive => VmState::Paused,
            Target::Pause => VmState::Pausing,
            Target::Stop => VmState::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let control = Arc::new(RunControl::new(2));
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let control = control.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while control.may_run() {
                        rounds += 1;
                        let _ = tx.send(rounds);
                        std::thread::yield_now();
                    }
                    control.vcpu_exited();
                })
            })
            .collect();
        rx.recv().unwrap();
        assert!(control.request_pause());
        control.wait_parked();
        assert_eq!(control.state(), VmState::Paused);
        while rx.try_recv().is_ok() {}
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "a parked vCPU kept running");
        assert!(control.resume());
        assert_eq!(control.state(), VmState::Running);
        rx.recv().unwrap();
        control.request_stop();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(control.state(), VmState::Stopped);
        assert!(!control.resume());
    }
}
