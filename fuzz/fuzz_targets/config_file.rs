//! `--config-file`: Firecracker's JSON document, parsed and applied through the same validation
//! as the API, over a fake VMM. Nothing may panic; a config that applies must also serialise
//! back (`GET /vm/config`) and apply again.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use squib_fuzz::{controller, is_sandboxed};
use squib_vmm::api::models::FullVmConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<FullVmConfig>(data) else {
        return;
    };
    // Logger and metrics create files; other paths must stay in the sandbox.
    if config.logger.is_some() || config.metrics.is_some() {
        return;
    }
    let boot_ok = config.boot_source.as_ref().is_none_or(|b| {
        is_sandboxed(&b.kernel_image_path) && b.initrd_path.as_deref().is_none_or(is_sandboxed)
    });
    let drives_ok = config
        .drives
        .iter()
        .all(|d| d.path_on_host.as_deref().is_none_or(is_sandboxed));
    if !boot_ok || !drives_ok {
        return;
    }
    let mut first = controller();
    if first.apply_config_file(&config).is_err() {
        return;
    }
    let round_trip = serde_json::to_vec(&first.full_config()).expect("config serialises");
    let again: FullVmConfig =
        serde_json::from_slice(&round_trip).expect("squib reads its own config");
    let mut second = controller();
    second
        .apply_config_file(&again)
        .expect("squib accepts the config it reported");
});
