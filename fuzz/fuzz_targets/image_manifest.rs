//! Manifest bodies from a registry (image manifests, indexes, manifest lists):
//! parsed, resolved and checked as a pull does before it fetches anything more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmlet_agent::images::pull::{check_manifest, ManifestPlan};
use vmlet_agent::images::ImageLimits;

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits::default();
    if let Ok(ManifestPlan::Image { config, layers }) = check_manifest(data, "fuzz", &limits) {
        assert!(config.size <= limits.max_config_bytes);
        assert!(!layers.is_empty());
    }
});
