//! Device counters: a struct of relaxed atomics written by a device's worker (no locks on the
//! request path) and a plain snapshot read from any thread, generated from one field list so
//! the two cannot drift apart.

/// Defines `$metrics` (atomic counters with a `pub(crate)` adder per field and `snapshot()`) and
/// `$snapshot` (the same fields as `u64`).
macro_rules! device_counters {
    (
        $(#[$metrics_doc:meta])* $metrics:ident,
        $(#[$snapshot_doc:meta])* $snapshot:ident,
        { $($(#[$field_doc:meta])* $field:ident),* $(,)? }
    ) => {
        $(#[$metrics_doc])*
        #[derive(Debug, Default)]
        pub struct $metrics {
            $($field: std::sync::atomic::AtomicU64,)*
        }

        $(#[$snapshot_doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snapshot {
            $($(#[$field_doc])* pub $field: u64,)*
        }

        #[allow(dead_code)]
        impl $metrics {
            $(
                pub(crate) fn $field(&self, n: u64) {
                    self.$field.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            )*

            /// Reads every counter (one by one: a snapshot taken while the device runs may mix
            /// adjacent instants; each counter is monotonic).
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }

        impl $snapshot {
            /// `(Firecracker's field name, value)` for every counter.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

pub(crate) use device_counters;
