//! Manifest downloads with a size cap. The registry client reads a response whole at
//! whatever size the registry sends, and a manifest is the first thing a registry
//! sends, before any digest or size of ours can be checked: so manifests are fetched
//! here, streamed, and refused as soon as they pass `images.max_manifest_bytes`.
//! Authentication follows the distribution spec: a request without credentials, then,
//! on a 401, the challenge's bearer token (fetched with the basic credentials, if any)
//! or the basic credentials themselves.

use std::time::Duration;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};

use super::config::RegistryHost;
use super::errors::{Ctx, PullError};
use super::identity::parse_bearer_challenge;

/// Fetches manifests from one registry host.
pub(super) struct ManifestFetcher {
    client: reqwest::Client,
    scheme: &'static str,
    max: u64,
}

impl ManifestFetcher {
    /// For `host` with its settings, refusing manifests over `max` bytes.
    pub(super) fn new(cfg: &RegistryHost, ctx: &Ctx, max: u64) -> Result<Self, PullError> {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(cfg.skip_tls_verify)
            .danger_accept_invalid_hostnames(cfg.skip_tls_verify)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ctx.unreachable(&e))?;
        Ok(ManifestFetcher {
            client,
            scheme: if cfg.plain_http { "http" } else { "https" },
            max,
        })
    }

    /// The manifest `oref` names (by digest if it has one, else by tag), as one of the
    /// `accept`ed media types.
    pub(super) async fn get(
        &self,
        oref: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
        ctx: &Ctx,
    ) -> Result<Vec<u8>, PullError> {
        let name = oref.digest().or(oref.tag()).unwrap_or("latest");
        let url = format!(
            "{}://{}/v2/{}/manifests/{name}",
            self.scheme,
            oref.resolve_registry(),
            oref.repository()
        );
        let mut authorization = match auth {
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
            _ => None,
        };
        let mut challenged = false;
        loop {
            let mut req = self.client.get(&url).header(ACCEPT, accept.join(", "));
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| ctx.unreachable(&e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                authorization = Some(self.answer(&resp, oref.repository(), auth, ctx).await?);
                continue;
            }
            return self.body(resp, &url, ctx).await;
        }
    }

    /// The `Authorization` value that answers the 401 `resp`'s challenge.
    async fn answer(
        &self,
        resp: &Response,
        repository: &str,
        auth: &RegistryAuth,
        ctx: &Ctx,
    ) -> Result<String, PullError> {
        let basic = match auth {
            RegistryAuth::Basic(user, password) => Some((user.as_str(), password.as_str())),
            _ => None,
        };
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_bearer_challenge);
        let Some(challenge) = challenge else {
            // Basic authentication (or none the registry would take).
            let (user, password) = basic.ok_or_else(|| {
                ctx.unauthorized("the registry asks for credentials and none were given".into())
            })?;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            return Ok(format!("Basic {pair}"));
        };
        let realm = challenge.get("realm").cloned().unwrap_or_default();
        let mut query = vec![("scope", format!("repository:{repository}:pull"))];
        if let Some(service) = challenge.get("service") {
            query.push(("service", service.clone()));
        }
        let mut req = self.client.get(&realm).query(&query);
        if let Some((user, password)) = basic {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await.map_err(|e| ctx.unreachable(&e))?;
        let status = resp.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(ctx.unauthorized(format!("token realm {realm}: {status}")));
        }
        if !status.is_success() {
            return Err(ctx.registry(format!("token realm {realm}: {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            token: Option<String>,
        }
        // Token responses are small; a realm is the registry's own service.
        let body = read_capped(resp, TOKEN_MAX)
            .await
            .map_err(|e| ctx.registry(format!("token realm {realm}: {e}")))?;
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| ctx.registry(format!("token realm {realm}: {e}")))?;
        token
            .token
            .or(token.access_token)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| ctx.unauthorized(format!("token realm {realm} returned no token")))
    }

    /// The manifest in `resp`, or the error its status says.
    async fn body(&self, resp: Response, url: &str, ctx: &Ctx) -> Result<Vec<u8>, PullError> {
        let status = resp.status();
        if !status.is_success() {
            let text = read_capped(resp, ERROR_MAX).await.unwrap_or_default();
            let message = format!("{url}: {status}: {}", String::from_utf8_lossy(&text).trim());
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ctx.unauthorized(message),
                StatusCode::NOT_FOUND => ctx.not_found(message),
                _ => ctx.registry(message),
            });
        }
        if let Some(len) = resp.content_length() {
            ctx.cap("a manifest", len, self.max, "max_manifest_bytes")?;
        }
        match read_capped(resp, self.max).await {
            Ok(body) => Ok(body),
            Err(ReadError::TooLarge(n)) => {
                Err(ctx.limit("a manifest", n, self.max, "max_manifest_bytes"))
            }
            Err(ReadError::Transfer(e)) => Err(ctx.unreachable(&e)),
        }
    }
}

/// Largest token response read.
const TOKEN_MAX: u64 = 1 << 20;
/// Largest error body read (for its message).
const ERROR_MAX: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("response over {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Transfer(#[from] reqwest::Error),
}

/// Reads `resp`'s body, failing once it passes `max` bytes (with how far it got).
async fn read_capped(mut resp: Response, max: u64) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let len = body.len() as u64 + chunk.len() as u64;
        if len > max {
            return Err(ReadError::TooLarge(len));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
