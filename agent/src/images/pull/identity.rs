//! The OAuth2 refresh-token grant for CRI identity tokens (Docker config `identitytoken`):
//! ask the registry for its token realm, then trade the identity token there for an
//! access token, as the distribution spec's "OAuth2 Token Authentication" describes.
//! `oci-client` only does the GET form of token auth, so this exchange is ours.

use std::collections::HashMap;
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;

use super::config::RegistryHost;
use super::errors::PullError;

/// Sent as `client_id`, which the grant requires.
const CLIENT_ID: &str = "vmlet";

/// Parses a `Bearer k="v",k2="v2"` challenge into its parameters. Hand-written because
/// the header grammar is small and `oci-client` does not expose its own parser; quoted
/// values may contain commas (`scope="repository:a:pull,push"`).
pub(super) fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let (scheme, rest) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    params.contains_key("realm").then_some(params)
}

/// Exchanges `identity_token` for a bearer token of `host`, scoped to pulling
/// `repository`. A registry without token auth gets the token as the password of the
/// `<token>` user instead (the Docker credential-helper convention).
pub(super) async fn exchange(
    cfg: &RegistryHost,
    host: &str,
    repository: &str,
    identity_token: &str,
) -> Result<RegistryAuth, PullError> {
    let unreachable = |e: reqwest::Error| PullError::Unreachable {
        registry: host.to_string(),
        message: e.to_string(),
    };
    let unauthorized = |message: String| PullError::Unauthorized {
        registry: host.to_string(),
        message,
    };
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(cfg.skip_tls_verify)
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(unreachable)?;
    let scheme = if cfg.plain_http { "http" } else { "https" };
    let probe = client
        .get(format!("{scheme}://{host}/v2/"))
        .send()
        .await
        .map_err(unreachable)?;
    let challenge = probe
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_bearer_challenge);
    let Some(challenge) = challenge else {
        return Ok(RegistryAuth::Basic(
            "<token>".into(),
            identity_token.to_string(),
        ));
    };
    let realm = challenge.get("realm").cloned().unwrap_or_default();
    let scope = format!("repository:{repository}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", identity_token),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = challenge.get("service") {
        form.push(("service", service.as_str()));
    }
    let resp = client
        .post(&realm)
        .form(&form)
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::BAD_REQUEST
    {
        let body = resp.text().await.unwrap_or_default();
        return Err(unauthorized(format!(
            "identity token refused by {realm}: {status} {body}"
        )));
    }
    if !status.is_success() {
        return Err(PullError::Registry {
            registry: host.to_string(),
            message: format!("token realm {realm}: {status}"),
        });
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        access_token: Option<String>,
        token: Option<String>,
    }
    let body: TokenResponse = resp.json().await.map_err(unreachable)?;
    body.access_token
        .or(body.token)
        .map(RegistryAuth::Bearer)
        .ok_or_else(|| unauthorized(format!("token realm {realm} returned no access token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=\"x\"").is_none());
    }
}
