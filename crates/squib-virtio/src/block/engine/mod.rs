//! The file engines behind a virtio-blk device: `SyncFileBackend` and `AsyncFileBackend`.
