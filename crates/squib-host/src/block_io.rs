//! Host-side block I/O controls: cache bypass and direct-I/O alignment.
