//! The pure steps of a pull that read what a registry sent: a manifest body parsed,
//! an index resolved to its linux/amd64 image manifest, and the config and layers an
//! image manifest names checked, all before anything more is fetched.

use oci_client::client::linux_amd64_resolver;
use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};

use super::blob::BlobRef;
use super::errors::{Ctx, PullError};
use crate::images::digest::Digest;
use crate::images::limits::ImageLimits;

/// What a manifest body leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPlan {
    /// An image manifest: its config and layers (bottom first).
    Image {
        /// The config blob.
        config: BlobRef,
        /// The layer blobs.
        layers: Vec<BlobRef>,
    },
    /// An index or manifest list: the linux/amd64 image manifest to fetch next.
    Index(Digest),
}

/// Checks a manifest `body` as a pull does (parse, then [`index_child`] or
/// [`image_blobs`]); errors name `reference`.
pub fn check_manifest(
    body: &[u8],
    reference: &str,
    limits: &ImageLimits,
) -> Result<ManifestPlan, PullError> {
    let ctx = Ctx {
        registry: String::new(),
        reference: reference.to_string(),
    };
    match ctx.parse_manifest(body)? {
        OciManifest::Image(m) => {
            let (config, layers) = image_blobs(&m, &ctx, limits)?;
            Ok(ManifestPlan::Image { config, layers })
        }
        OciManifest::ImageIndex(index) => Ok(ManifestPlan::Index(index_child(&index, &ctx)?)),
    }
}

/// The digest of the linux/amd64 image manifest `index` lists.
pub(super) fn index_child(index: &OciImageIndex, ctx: &Ctx) -> Result<Digest, PullError> {
    let child = linux_amd64_resolver(&index.manifests).ok_or_else(|| PullError::NoPlatform {
        reference: ctx.reference.clone(),
    })?;
    child.parse().map_err(|e| ctx.unsupported(format!("{e}")))
}

/// The config (within `max_config_bytes`: it is read whole to parse it) and the
/// layers (at least one) `manifest` names.
pub(super) fn image_blobs(
    manifest: &OciImageManifest,
    ctx: &Ctx,
    limits: &ImageLimits,
) -> Result<(BlobRef, Vec<BlobRef>), PullError> {
    let config = ctx.blob_ref(&manifest.config)?;
    // Refused before download.
    ctx.cap(
        "the image config",
        config.size,
        limits.max_config_bytes,
        "max_config_bytes",
    )?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| ctx.blob_ref(l))
        .collect::<Result<Vec<_>, _>>()?;
    if layers.is_empty() {
        return Err(ctx.unsupported("the image has no layers".into()));
    }
    Ok((config, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(config_size: u64, layers: usize) -> String {
        let layer = format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{DIGEST}","size":7}}"#
        );
        let layers = vec![layer; layers].join(",");
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{DIGEST}","size":{config_size}}},
            "layers":[{layers}]}}"#
        )
    }

    #[test]
    fn image_manifest_names_its_blobs() {
        let plan = check_manifest(image(3, 2).as_bytes(), "r", &ImageLimits::default()).unwrap();
        let ManifestPlan::Image { config, layers } = plan else {
            panic!("not an image: {plan:?}");
        };
        assert_eq!((config.size, layers.len()), (3, 2));
    }

    #[test]
    fn bad_manifests_are_refused() {
        let limits = ImageLimits::default();
        let too_big = image(limits.max_config_bytes + 1, 1);
        assert!(matches!(
            check_manifest(too_big.as_bytes(), "r", &limits),
            Err(PullError::Limit { .. })
        ));
        assert!(matches!(
            check_manifest(image(3, 0).as_bytes(), "r", &limits),
            Err(PullError::Unsupported { .. })
        ));
        let bad_digest = image(3, 1).replace(DIGEST, "sha256:zz");
        assert!(check_manifest(bad_digest.as_bytes(), "r", &limits).is_err());
        assert!(check_manifest(b"{", "r", &limits).is_err());
    }

    #[test]
    fn index_resolves_to_linux_amd64() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{DIGEST}","size":9,
              "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let plan = check_manifest(index.as_bytes(), "r", &ImageLimits::default()).unwrap();
        assert_eq!(plan, ManifestPlan::Index(DIGEST.parse().unwrap()));
        let arm = index.replace("amd64", "arm64");
        assert!(matches!(
            check_manifest(arm.as_bytes(), "r", &ImageLimits::default()),
            Err(PullError::NoPlatform { .. })
        ));
    }
}
