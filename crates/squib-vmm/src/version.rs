//! The version squib reports: the Firecracker release whose API and command line it follows,
//! and its own.

/// The Firecracker release squib is compatible with (`GET /version`, `GET /`, `--version`).
pub const FIRECRACKER_VERSION: &str = "1.16.0";

/// squib's own version.
pub const SQUIB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The first line of `--version`: Firecracker's `Firecracker vX.Y.Z` (what Kata and the go-sdk
/// parse: field 2 of the line split on spaces), then squib's name and version.
pub fn version_line() -> String {
    format!("Firecracker v{FIRECRACKER_VERSION} (squib {SQUIB_VERSION})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_field_is_a_firecracker_version() {
        let line = version_line();
        let field = line.split(' ').nth(1).unwrap();
        let numbers: Vec<u32> = field
            .strip_prefix('v')
            .unwrap()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(numbers, [1, 16, 0]);
        assert!(line.contains("squib"));
    }
}
