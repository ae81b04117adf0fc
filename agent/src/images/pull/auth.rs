//! Pull credentials as the CRI `AuthConfig` carries them, and their registry-client form.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use super::errors::PullError;

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
    /// An identity token: an OAuth2 refresh token, exchanged at the registry's token
    /// realm for an access token.
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
    pub(super) fn to_auth(&self) -> Result<Auth, PullError> {
        self.to_registry_auth().map(|a| match a {
            RegistryAuth::Anonymous if !self.identity_token.is_empty() => {
                Auth::Identity(self.identity_token.clone())
            }
            a => Auth::Ready(a),
        })
    }

    fn to_registry_auth(&self) -> Result<RegistryAuth, PullError> {
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
        Ok(RegistryAuth::Anonymous)
    }
}

/// Credentials ready for the registry client, or an identity token still to exchange
/// (per endpoint: each registry or mirror has its own token realm).
#[derive(Clone)]
pub(super) enum Auth {
    /// Use as is.
    Ready(RegistryAuth),
    /// Exchange first.
    Identity(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_map_to_auth() {
        let anon = Credentials::default();
        assert!(matches!(
            anon.to_auth().unwrap(),
            Auth::Ready(RegistryAuth::Anonymous)
        ));
        let identity = Credentials {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert!(matches!(identity.to_auth().unwrap(), Auth::Identity(t) if t == "refresh"));
        let basic = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:q"),
            ..Default::default()
        };
        match basic.to_auth().unwrap() {
            Auth::Ready(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("u", "p:q"))
            }
            _ => panic!("not basic auth"),
        }
        let token = Credentials {
            registry_token: "t".into(),
            username: "u".into(),
            ..Default::default()
        };
        assert!(matches!(
            token.to_auth().unwrap(),
            Auth::Ready(RegistryAuth::Bearer(_))
        ));
        let bad = Credentials {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(matches!(bad.to_auth(), Err(PullError::BadCredentials(_))));
    }
}
