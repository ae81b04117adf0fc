//! Pulling from OCI / Docker v2 registries with `oci-client`: credentials, per-registry
//! settings (plain HTTP, TLS verification, mirrors), manifest resolution (indexes and
//! manifest lists to linux/amd64; manifests fetched bounded by `manifest`) and verified
//! downloads into the content store.

mod auth;
mod blob;
mod config;
mod errors;
mod identity;
mod manifest;
mod plan;

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use auth::Auth;
pub use auth::Credentials;
pub use blob::BlobRef;
pub use config::{RegistriesConfig, RegistryHost};
use errors::Ctx;
pub use errors::PullError;
use manifest::ManifestFetcher;
pub use plan::{check_manifest, ManifestPlan};

use super::digest::Digest;
use super::limits::ImageLimits;
use super::reference::ImageRef;
use super::store::{ContentStore, StoreError};

/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;

/// What a pull fetched into the store.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The digest the reference resolved to (the index's, for a multi-platform image):
    /// the image's repo digest.
    pub top_digest: Digest,
    /// Manifest blobs (index and/or image manifest), kept for repo digests and GC.
    pub manifests: Vec<BlobRef>,
    /// The image config blob; its digest is the image ID.
    pub config: BlobRef,
    /// Layers, bottom first.
    pub layers: Vec<BlobRef>,
    /// Blobs downloaded (and so verified) by this pull; the rest were in the store
    /// already or fetched by a concurrent pull.
    pub downloaded: Vec<Digest>,
}

/// Fetches images into the content store.
pub struct Puller {
    registries: RegistriesConfig,
    limits: ImageLimits,
}

impl Puller {
    /// A puller with these per-registry settings, refusing manifests and configs over
    /// `limits`.
    pub fn new(registries: RegistriesConfig, limits: ImageLimits) -> Self {
        Self { registries, limits }
    }

    /// Resolves `image` and stores its manifests, config and layers, verified. Mirrors
    /// of the image's registry are tried first, in order.
    pub async fn fetch(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        creds: &Credentials,
    ) -> Result<Fetched, PullError> {
        let auth = creds.to_auth()?;
        let upstream = self.registries.host(image.registry());
        let mut last_err = None;
        for mirror in &upstream.mirrors {
            match self.fetch_from(store, image, &auth, Some(mirror)).await {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::warn!(%image, %mirror, error = %e, "mirror failed, trying the next endpoint");
                    last_err = Some(e);
                }
            }
        }
        match self.fetch_from(store, image, &auth, None).await {
            Ok(f) => Ok(f),
            Err(e) => {
                if let Some(m) = last_err {
                    tracing::debug!(error = %m, "an earlier mirror failed too");
                }
                Err(e)
            }
        }
    }

    fn client(&self, host: &str) -> Client {
        let cfg = self.registries.host(host);
        let protocol = if cfg.plain_http {
            ClientProtocol::HttpsExcept(vec![host.to_string()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            accept_invalid_certificates: cfg.skip_tls_verify,
            accept_invalid_hostnames: cfg.skip_tls_verify,
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            max_concurrent_download: PARALLEL_LAYERS,
            ..ClientConfig::default()
        })
    }

    /// Fetches `image` from its registry, or from `mirror`: the manifests, then the
    /// config and layers not in `store` yet.
    async fn fetch_from(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        auth: &Auth,
        mirror: Option<&str>,
    ) -> Result<Fetched, PullError> {
        let mut oref = image.to_oci();
        if let Some(m) = mirror {
            oref.set_mirror_registry(m.to_string());
        }
        let host = oref.resolve_registry().to_string();
        let client = self.client(&host);
        let ctx = Ctx {
            registry: host.clone(),
            reference: image.to_string(),
        };
        tracing::info!(%image, registry = %host, "pulling");
        let auth = &self.registry_auth(auth, &host, image).await?;
        let fetcher = ManifestFetcher::new(
            &self.registries.host(&host),
            &ctx,
            self.limits.max_manifest_bytes,
        )?;
        let (manifests, manifest) =
            fetch_manifests(&fetcher, &oref, auth, &ctx, store, image.digest()).await?;
        let top_digest = manifests.top.digest.clone();

        let (config, layers) = plan::image_blobs(&manifest, &ctx, &self.limits)?;
        // The blob downloads authenticate with these credentials.
        client.store_auth_if_needed(&host, auth).await;
        let downloaded =
            fetch_blobs(&client, &oref, &ctx, store, &manifest, &config, &layers).await?;
        Ok(Fetched {
            top_digest,
            manifests: manifests.into_blobs(),
            config,
            layers,
            downloaded,
        })
    }

    /// The credentials for `host`: as given, or exchanged there for an identity token.
    async fn registry_auth(
        &self,
        auth: &Auth,
        host: &str,
        image: &ImageRef,
    ) -> Result<RegistryAuth, PullError> {
        Ok(match auth {
            Auth::Ready(a) => a.clone(),
            Auth::Identity(token) => {
                identity::exchange(&self.registries.host(host), host, image.repository(), token)
                    .await?
            }
        })
    }
}

/// The manifest media types a pull accepts.
const ACCEPT: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// The manifest blobs of a pull.
struct Manifests {
    /// The one the reference names: an image manifest, or an index or manifest list.
    top: BlobRef,
    /// The linux/amd64 image manifest the top one lists, if that is an index.
    platform: Option<BlobRef>,
}

impl Manifests {
    /// Both, top first.
    fn into_blobs(self) -> Vec<BlobRef> {
        std::iter::once(self.top).chain(self.platform).collect()
    }
}

/// Fetches the manifest `oref` names into the store (it must match `pinned`, the
/// reference's digest) and, for an index or manifest list, the linux/amd64 image
/// manifest it lists. Returns the manifest blobs and the image manifest.
async fn fetch_manifests(
    fetcher: &ManifestFetcher,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    ctx: &Ctx,
    store: &ContentStore,
    pinned: Option<&Digest>,
) -> Result<(Manifests, OciImageManifest), PullError> {
    let (top, parsed) = fetch_manifest(fetcher, oref, auth, ctx, store, pinned).await?;
    let index = match parsed {
        OciManifest::Image(m) => {
            let manifests = Manifests {
                top,
                platform: None,
            };
            return Ok((manifests, m));
        }
        OciManifest::ImageIndex(index) => index,
    };
    let child = plan::index_child(&index, ctx)?;
    let child_ref = oref.clone_with_digest(child.to_string());
    let (image, parsed) =
        fetch_manifest(fetcher, &child_ref, auth, ctx, store, Some(&child)).await?;
    match parsed {
        OciManifest::Image(m) => {
            let manifests = Manifests {
                top,
                platform: Some(image),
            };
            Ok((manifests, m))
        }
        OciManifest::ImageIndex(_) => Err(ctx.unsupported("an index inside an index".into())),
    }
}

/// Fetches one manifest, checks its digest against `expected` (when known), stores it
/// and parses it.
async fn fetch_manifest(
    fetcher: &ManifestFetcher,
    oref: &oci_client::Reference,
    auth: &RegistryAuth,
    ctx: &Ctx,
    store: &ContentStore,
    expected: Option<&Digest>,
) -> Result<(BlobRef, OciManifest), PullError> {
    // Read bounded (images.max_manifest_bytes), before it is hashed, stored or parsed.
    let body = fetcher.get(oref, auth, ACCEPT, ctx).await?;
    let actual = Digest::of(&body);
    if let Some(expected) = expected {
        if expected != &actual {
            return Err(PullError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    store.put(&actual, &body)?;
    let parsed = ctx.parse_manifest(&body)?;
    let blob = BlobRef {
        digest: actual,
        size: body.len() as u64,
    };
    Ok((blob, parsed))
}

/// Downloads the config and layer blobs not in the store yet, a few at once. Returns
/// the digests this pull downloaded.
async fn fetch_blobs(
    client: &Client,
    oref: &oci_client::Reference,
    ctx: &Ctx,
    store: &ContentStore,
    manifest: &OciImageManifest,
    config: &BlobRef,
    layers: &[BlobRef],
) -> Result<Vec<Digest>, PullError> {
    // Owned items: borrowed ones make the stream's future lose `Send` (a known
    // higher-ranked lifetime limitation of async closures over references).
    let mut wanted: Vec<(OciDescriptor, BlobRef)> = vec![(manifest.config.clone(), config.clone())];
    wanted.extend(manifest.layers.iter().cloned().zip(layers.iter().cloned()));
    let fetched: Vec<Option<Digest>> = futures_util::stream::iter(wanted)
        .map(move |(desc, blob)| async move {
            let downloaded = fetch_blob(client, oref, &desc, &blob, store, ctx).await?;
            Ok::<_, PullError>(downloaded.then_some(blob.digest))
        })
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    Ok(fetched.into_iter().flatten().collect())
}

/// Downloads one blob into the store unless it is there already. Returns whether it
/// downloaded. The per-digest lock makes a concurrent pull of the same blob wait and then
/// find it in place.
async fn fetch_blob(
    client: &Client,
    oref: &oci_client::Reference,
    desc: &OciDescriptor,
    blob: &BlobRef,
    store: &ContentStore,
    ctx: &Ctx,
) -> Result<bool, PullError> {
    let _guard = store.lock(&blob.digest).await;
    if store.contains(&blob.digest, blob.size) {
        return Ok(false);
    }
    tracing::debug!(digest = %blob.digest, size = blob.size, "downloading blob");
    let mut stream = client
        .pull_blob_stream(oref, desc)
        .await
        .map_err(|e| ctx.classify(e))?;
    let mut writer = store.writer(&blob.digest, blob.size)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ctx.classify(OciDistributionError::IoError(e)))?;
        // Chunks are small (tens of KiB), so the synchronous write does not stall the
        // runtime noticeably; the page cache absorbs it.
        writer.write(&chunk)?;
    }
    match writer.commit() {
        Err(StoreError::DigestMismatch { expected, actual }) => Err(PullError::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        other => other.map(|()| true).map_err(PullError::from),
    }
}
