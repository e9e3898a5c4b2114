//! Identifiers, checked here and nowhere else, with Firecracker's rules.
//!
//! - The instance id (`--id`): 1 to 64 ASCII letters, digits or `-` (Firecracker's
//!   `validate_instance_id`; a uuid4 from the go-sdk passes).
//! - Resource ids (`drive_id`, and later `iface_id`, …), from the API path, the config file and
//!   squib's own `--disk id=`: not empty, and only `_` or alphanumeric characters (Firecracker's
//!   `checked_id`, which uses `char::is_alphanumeric`, so non-ASCII letters pass too). Firecracker
//!   sets no length limit beyond the request size; neither does squib.

/// Firecracker's longest instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// Why an id was refused; the text is Firecracker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An instance id of the wrong length.
    #[error("invalid instance id `{0}`: the length must be between 1 and {MAX_INSTANCE_ID_LEN}")]
    InstanceIdLength(String),
    /// An instance id with a character other than ASCII alphanumerics and `-`.
    #[error(
        "invalid instance id `{id}`: invalid char ({ch}) at position {pos}; use ASCII letters, \
         digits and '-'"
    )]
    InstanceIdChar {
        /// The id as given.
        id: String,
        /// The first bad character.
        ch: char,
        /// Its position (in characters).
        pos: usize,
    },
    /// An empty resource id.
    #[error("The ID cannot be empty.")]
    EmptyResourceId,
    /// A resource id with a character other than `_` or alphanumerics.
    #[error(
        "API Resource IDs can only contain alphanumeric characters and underscores (got `{0}`)."
    )]
    ResourceIdChar(String),
}

/// Checks an instance id (`--id`).
pub fn check_instance_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(IdError::InstanceIdLength(id.to_owned()));
    }
    match id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some((pos, ch)) => Err(IdError::InstanceIdChar {
            id: id.to_owned(),
            ch,
            pos,
        }),
        None => Ok(()),
    }
}

/// Checks a resource id (`drive_id`, `iface_id`, …).
pub fn check_resource_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::EmptyResourceId);
    }
    if id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        Ok(())
    } else {
        Err(IdError::ResourceIdChar(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_follow_firecracker() {
        let long = "a".repeat(64);
        for ok in [
            "anonymous-instance",
            "5f0f8e4a-3c1b-4c47-9a5e-1d2f3a4b5c6d",
            "a",
            "-",
            long.as_str(),
        ] {
            assert_eq!(check_instance_id(ok), Ok(()), "{ok:?}");
        }
        let too_long = "a".repeat(65);
        for bad in ["", too_long.as_str(), "vm_1", "a b", "é", "a/b"] {
            assert!(check_instance_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            check_instance_id("ab_c"),
            Err(IdError::InstanceIdChar {
                id: "ab_c".into(),
                ch: '_',
                pos: 2
            })
        );
    }

    #[test]
    fn resource_ids_follow_firecracker() {
        let long = "x".repeat(200);
        for ok in ["rootfs", "rootfs_1", "_", "Ünïcödé", long.as_str()] {
            assert_eq!(check_resource_id(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(check_resource_id(""), Err(IdError::EmptyResourceId));
        for bad in ["a-b", "a b", "a/b", "a.b", "..", "a\0"] {
            assert!(
                matches!(check_resource_id(bad), Err(IdError::ResourceIdChar(_))),
                "{bad:?} accepted"
            );
        }
    }
}
