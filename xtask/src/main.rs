//! `cargo xtask <task>`: squib's developer tasks.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("usage: cargo xtask <lint-unsafe|test-guest|bench>");
    std::process::exit(2);
}
