//! Pulling from OCI / Docker v2 registries with `oci-client`: credentials, per-registry
//! settings (plain HTTP, TLS verification, mirrors), manifest resolution (indexes and
//! manifest lists to linux/amd64) and verified downloads into the content store.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::reference::ImageRef;
use super::store::{ContentStore, StoreError};

/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry refused the credentials (or their absence).
    #[error("registry {registry} denied access: {message}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The repository, tag or digest does not exist.
    #[error("{reference} not found: {message}")]
    NotFound {
        /// The reference.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// The registry could not be reached, or the connection broke mid-transfer.
    #[error("registry {registry} unreachable: {message}")]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The transport error.
        message: String,
    },
    /// Content from the registry does not match its digest.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The announced digest.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// An image index has no linux/amd64 image.
    #[error("{reference} has no linux/amd64 image")]
    NoPlatform {
        /// The reference.
        reference: String,
    },
    /// A manifest or blob is of a kind this runtime cannot use.
    #[error("unsupported content in {reference}: {reason}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// What was wrong.
        reason: String,
    },
    /// Any other registry protocol error.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// The error.
        message: String,
    },
    /// The content store failed (including verification of what was written).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configured credentials are malformed.
    #[error("invalid credentials: {0}")]
    BadCredentials(String),
}

/// Settings for one registry host (`docker.io`, `registry.local:5000`), from the
/// daemon config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryHost {
    /// Speak plain HTTP instead of HTTPS (local and test registries).
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub skip_tls_verify: bool,
    /// Hosts to try first, in order; the registry itself is tried last.
    pub mirrors: Vec<String>,
}

/// Per-registry settings, keyed by registry host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Settings by host.
    pub hosts: HashMap<String, RegistryHost>,
}

impl RegistriesConfig {
    fn host(&self, host: &str) -> RegistryHost {
        self.hosts.get(host).cloned().unwrap_or_default()
    }
}

/// Credentials for one pull, mirroring the CRI `AuthConfig` message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name for basic auth.
    pub username: String,
    /// Password for basic auth.
    pub password: String,
    /// `base64(username:password)`, the Docker config form.
    pub auth: String,
    /// The registry these credentials are for (informational: kubelet already chose).
    pub server_address: String,
    /// An identity (refresh) token; sent as the password of the `<token>` user, the
    /// form Docker credential helpers use.
    pub identity_token: String,
    /// A bearer token to present to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The registry client's form of these credentials.
    fn to_auth(&self) -> Result<RegistryAuth, PullError> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|e| PullError::BadCredentials(format!("auth is not base64: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| PullError::BadCredentials("auth is not UTF-8".into()))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| PullError::BadCredentials("auth is not user:password".into()))?;
            return Ok(RegistryAuth::Basic(user.into(), pass.into()));
        }
        if !self.identity_token.is_empty() {
            return Ok(RegistryAuth::Basic(
                "<token>".into(),
                self.identity_token.clone(),
            ));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// A blob the image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

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
}

impl Puller {
    /// A puller with these per-registry settings.
    pub fn new(registries: RegistriesConfig) -> Self {
        Self { registries }
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

    async fn fetch_from(
        &self,
        store: &ContentStore,
        image: &ImageRef,
        auth: &RegistryAuth,
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

        const ACCEPT: &[&str] = &[
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (body, _) = client
            .pull_manifest_raw(&oref, auth, ACCEPT)
            .await
            .map_err(|e| ctx.classify(e))?;
        let top_digest = Digest::of(&body);
        if let Some(pinned) = image.digest() {
            if pinned != &top_digest {
                return Err(PullError::DigestMismatch {
                    expected: pinned.to_string(),
                    actual: top_digest.to_string(),
                });
            }
        }
        store.put(&top_digest, &body)?;
        let mut manifests = vec![BlobRef {
            digest: top_digest.clone(),
            size: body.len() as u64,
        }];

        let manifest: OciImageManifest = match ctx.parse_manifest(&body)? {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let child = linux_amd64_resolver(&index.manifests).ok_or_else(|| {
                    PullError::NoPlatform {
                        reference: ctx.reference.clone(),
                    }
                })?;
                let child: Digest = child.parse().map_err(|e| ctx.unsupported(format!("{e}")))?;
                let (body, _) = client
                    .pull_manifest_raw(&oref.clone_with_digest(child.to_string()), auth, ACCEPT)
                    .await
                    .map_err(|e| ctx.classify(e))?;
                let actual = Digest::of(&body);
                if actual != child {
                    return Err(PullError::DigestMismatch {
                        expected: child.to_string(),
                        actual: actual.to_string(),
                    });
                }
                store.put(&child, &body)?;
                manifests.push(BlobRef {
                    digest: child,
                    size: body.len() as u64,
                });
                match ctx.parse_manifest(&body)? {
                    OciManifest::Image(m) => m,
                    OciManifest::ImageIndex(_) => {
                        return Err(ctx.unsupported("an index inside an index".into()))
                    }
                }
            }
        };

        let config = ctx.blob_ref(&manifest.config)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| ctx.blob_ref(l))
            .collect::<Result<Vec<_>, _>>()?;
        if layers.is_empty() {
            return Err(ctx.unsupported("the image has no layers".into()));
        }

        // Owned items: borrowed ones make the stream's future lose `Send` (a known
        // higher-ranked lifetime limitation of async closures over references).
        let mut wanted: Vec<(OciDescriptor, BlobRef)> =
            vec![(manifest.config.clone(), config.clone())];
        wanted.extend(manifest.layers.iter().cloned().zip(layers.iter().cloned()));
        let (client, oref, ctx) = (&client, &oref, &ctx);
        let fetched: Vec<Option<Digest>> = futures_util::stream::iter(wanted)
            .map(move |(desc, blob)| async move {
                let downloaded = fetch_blob(client, oref, &desc, &blob, store, ctx).await?;
                Ok::<_, PullError>(downloaded.then_some(blob.digest))
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;

        Ok(Fetched {
            top_digest,
            manifests,
            config,
            layers,
            downloaded: fetched.into_iter().flatten().collect(),
        })
    }
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

/// What errors are reported against.
struct Ctx {
    registry: String,
    reference: String,
}

impl Ctx {
    fn unsupported(&self, reason: String) -> PullError {
        PullError::Unsupported {
            reference: self.reference.clone(),
            reason,
        }
    }

    fn parse_manifest(&self, body: &[u8]) -> Result<OciManifest, PullError> {
        serde_json::from_slice(body).map_err(|e| self.unsupported(format!("manifest: {e}")))
    }

    fn blob_ref(&self, d: &OciDescriptor) -> Result<BlobRef, PullError> {
        let digest = d
            .digest
            .parse()
            .map_err(|e| self.unsupported(format!("{e}")))?;
        let size = u64::try_from(d.size)
            .map_err(|_| self.unsupported(format!("negative size for {}", d.digest)))?;
        Ok(BlobRef { digest, size })
    }

    /// Sorts a registry client error into what an operator needs to know.
    fn classify(&self, e: OciDistributionError) -> PullError {
        let unauthorized = |message: String| PullError::Unauthorized {
            registry: self.registry.clone(),
            message,
        };
        let not_found = |message: String| PullError::NotFound {
            reference: self.reference.clone(),
            message,
        };
        let unreachable = |message: String| PullError::Unreachable {
            registry: self.registry.clone(),
            message,
        };
        match e {
            OciDistributionError::AuthenticationFailure(m) => unauthorized(m),
            OciDistributionError::UnauthorizedError { url } => unauthorized(url),
            OciDistributionError::RegistryError { envelope, url } => {
                let message = format!("{url}: {envelope}");
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(message)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found(message)
                } else {
                    PullError::Registry {
                        registry: self.registry.clone(),
                        message,
                    }
                }
            }
            OciDistributionError::ServerError { code, url, message } => match code {
                401 | 403 => unauthorized(format!("{url}: {message}")),
                404 => not_found(format!("{url}: {message}")),
                _ => PullError::Registry {
                    registry: self.registry.clone(),
                    message: format!("{url}: HTTP {code}: {message}"),
                },
            },
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m),
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => PullError::DigestMismatch { expected, actual },
            OciDistributionError::IoError(io) => {
                let inner = io
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>());
                match inner {
                    Some(oci_client::errors::DigestError::VerificationError {
                        expected,
                        actual,
                    }) => PullError::DigestMismatch {
                        expected: expected.clone(),
                        actual: actual.clone(),
                    },
                    _ => unreachable(format!("transfer interrupted: {}", error_chain(&io))),
                }
            }
            OciDistributionError::RequestError(r) => unreachable(error_chain(&r)),
            e @ (OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)
            | OciDistributionError::ManifestParsingError(_)
            | OciDistributionError::VersionedParsingError(_)) => self.unsupported(e.to_string()),
            other => PullError::Registry {
                registry: self.registry.clone(),
                message: other.to_string(),
            },
        }
    }
}

/// An error with its causes, `a: b: c`: transport errors hide the useful part
/// ("connection refused") in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_map_to_auth() {
        let anon = Credentials::default();
        assert!(matches!(anon.to_auth().unwrap(), RegistryAuth::Anonymous));
        let basic = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:q"),
            ..Default::default()
        };
        match basic.to_auth().unwrap() {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("u", "p:q")),
            other => panic!("{other:?}"),
        }
        let token = Credentials {
            registry_token: "t".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert!(matches!(token.to_auth().unwrap(), RegistryAuth::Bearer(_)));
        let bad = Credentials {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(matches!(bad.to_auth(), Err(PullError::BadCredentials(_))));
    }
}
