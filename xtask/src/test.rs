//! `cargo xtask test`: the project's test command, from a fresh machine.
//!
//! Installs the guest target and the Debian packages the tests use, then runs the whole
//! workspace's tests. Tests that need `/dev/kvm`, `iasl` or the network say loudly when they
//! skip; on our machines none of them should.

use crate::setup;

pub fn run(args: &[String]) -> Result<(), String> {
    setup::guest_target()?;
    setup::test_packages()?;
    let mut cargo_args = vec!["test", "--workspace", "--locked"];
    cargo_args.extend(args.iter().map(String::as_str));
    setup::run(&setup::cargo(), &cargo_args)
}
