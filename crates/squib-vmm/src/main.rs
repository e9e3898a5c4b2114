//! `squib`: one process per microVM.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("squib: not built yet");
    std::process::exit(1);
}
