//! Image references as kubelet and crictl write them (`busybox`, `busybox:1.36`,
//! `registry:5000/team/app@sha256:...`), normalized the way the ecosystem does: registry
//! `docker.io` by default, `library/` for single-name Docker Hub repositories, tag
//! `latest` when neither tag nor digest is given.

use std::fmt;

use oci_client::Reference;

use super::digest::Digest;

/// A reference that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The grammar of references rejected it.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The input.
        reference: String,
        /// Why.
        reason: String,
    },
}

/// A normalized image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalizes `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: String| ReferenceError::Invalid {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() || s.trim() != s {
            return Err(invalid("empty or surrounded by whitespace".into()));
        }
        let parsed: Reference = s.parse().map_err(|e| invalid(format!("{e}")))?;
        let digest = parsed
            .digest()
            .map(|d| d.parse::<Digest>().map_err(|e| invalid(e.to_string())))
            .transpose()?;
        let tag = match (parsed.tag(), &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` when there is a tag (what CRI calls a repo tag).
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` for a given manifest digest (a CRI repo digest).
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The same reference pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The reference in the registry client's terms.
    pub fn to_oci(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.to_string(),
            ),
            (_, Some(d)) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (t, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(
            r.repo_tag().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        let r = ImageRef::parse("team/app:1.2").unwrap();
        assert_eq!(r.to_string(), "docker.io/team/app:1.2");
        let r = ImageRef::parse("127.0.0.1:5000/a/b").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("latest"));
        let r = ImageRef::parse(&format!("localhost:5000/app@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.as_str()), Some(D));
        assert_eq!(r.to_string(), format!("localhost:5000/app@{D}"));
        let r = ImageRef::parse(&format!("app:v1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/app:v1@{D}"));
        let r = ImageRef::parse("index.docker.io/library/busybox:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1");
    }

    #[test]
    fn rejects_garbage() {
        for (bad, why) in [
            ("", "empty or surrounded by whitespace"),
            (" busybox", "empty or surrounded by whitespace"),
            ("Busy Box", "invalid reference format"),
            ("a:b:c", "invalid reference format"),
            ("app@sha256:zz", "invalid reference format"),
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            let ReferenceError::Invalid { reference, reason } = &e;
            assert_eq!((reference.as_str(), reason.as_str()), (bad, why), "{e}");
        }
        // The grammar takes upper-case hex; the digest check does not.
        let upper = format!("app@sha256:{}", "A".repeat(64));
        let e = ImageRef::parse(&upper).unwrap_err();
        let ReferenceError::Invalid { reference, reason } = &e;
        assert_eq!(
            (reference.as_str(), reason.as_str()),
            (
                upper.as_str(),
                format!("malformed digest \"sha256:{}\"", "A".repeat(64)).as_str()
            ),
            "{e}"
        );
    }
}
