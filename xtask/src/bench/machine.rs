//! The machine a report was measured on: figures only compare on like machines.

use std::path::Path;

use crate::setup;

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub kvm: &'static str,
    pub date: String,
    pub commit: String,
    /// `/proc/loadavg` when the run started: other work on a shared machine shows up here.
    pub load: String,
}

impl Machine {
    pub fn describe(workspace: &Path) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        // PVM emulates guest kernel mode instruction by instruction; every figure depends on it.
        let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
            "PVM (kvm_pvm: guest CPL0 emulated, CPL3 native)"
        } else if Path::new("/dev/kvm").exists() {
            "hardware (VMX/SVM)"
        } else {
            "none (/dev/kvm missing)"
        };
        let date = trimmed(setup::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
        let commit = Machine::head(workspace);
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu,
            cores,
            kernel,
            kvm,
            date,
            commit,
            load,
        }
    }

    /// Notes the commit at the end of a run: other engineers' work may land while it runs, and
    /// squib and the guest are built when their level starts.
    pub fn finish(&mut self, workspace: &Path) {
        let end = Machine::head(workspace);
        if end != self.commit {
            self.commit = format!("{} at the start, {end} at the end", self.commit);
        }
    }

    fn head(workspace: &Path) -> String {
        trimmed(setup::output(
            "git",
            &[
                "-C",
                &workspace.display().to_string(),
                "describe",
                "--always",
                "--dirty",
            ],
        ))
    }

    /// The day, as used in the report's file name.
    pub fn day(&self) -> &str {
        self.date.split(' ').next().unwrap_or("undated")
    }
}

fn trimmed(result: Result<String, String>) -> String {
    result.map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}
