//! Translations between backend types and CRI messages.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use super::backend::{BackendError, ErrorKind, FsUsage, ImageInfo, PullAuth};
use crate::proto;

/// The gRPC status of a backend error.
pub fn status(e: BackendError) -> Status {
    let code = match e.kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::InUse => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, e.message)
}

/// The image name of a request, which must be present.
pub fn required_image(spec: Option<&proto::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Status::invalid_argument(
            "image spec with a non-empty image is required",
        )),
    }
}

/// The CRI form of an image. `User` becomes a uid when its user part is numeric (as
/// containerd reports it), else a user name.
pub fn image(info: ImageInfo) -> proto::Image {
    let user_part = info.user.split(':').next().unwrap_or("");
    let (uid, username) = match user_part.parse::<i64>() {
        Ok(uid) => (Some(proto::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user_part.to_string()),
    };
    proto::Image {
        spec: Some(proto::ImageSpec {
            image: info.id.clone(),
            ..Default::default()
        }),
        id: info.id,
        repo_tags: info.repo_tags,
        repo_digests: info.repo_digests,
        size: info.size,
        uid,
        username,
        pinned: info.pinned,
    }
}

/// Backend credentials from a CRI `AuthConfig`.
pub fn auth(a: Option<proto::AuthConfig>) -> PullAuth {
    let a = a.unwrap_or_default();
    PullAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }
}

/// The CRI form of the image filesystem's usage.
pub fn fs_usage(u: FsUsage) -> proto::FilesystemUsage {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    proto::FilesystemUsage {
        timestamp: now,
        fs_id: Some(proto::FilesystemIdentifier {
            mountpoint: u.mountpoint,
        }),
        used_bytes: Some(proto::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(proto::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_becomes_uid_or_name() {
        let img = |user: &str| {
            image(ImageInfo {
                id: "sha256:x".into(),
                user: user.into(),
                ..Default::default()
            })
        };
        assert_eq!(
            img("1000:1001").uid,
            Some(proto::Int64Value { value: 1000 })
        );
        assert_eq!(img("0").uid, Some(proto::Int64Value { value: 0 }));
        let named = img("nobody:nogroup");
        assert_eq!((named.uid, named.username.as_str()), (None, "nobody"));
        let none = img("");
        assert_eq!((none.uid, none.username.as_str()), (None, ""));
    }

    #[test]
    fn error_kinds_map_to_codes() {
        let code = |k| status(BackendError::new(k, "m")).code();
        assert_eq!(code(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(code(ErrorKind::InUse), Code::FailedPrecondition);
        assert_eq!(code(ErrorKind::PermissionDenied), Code::PermissionDenied);
        assert_eq!(code(ErrorKind::Unavailable), Code::Unavailable);
        let e = required_image(None).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (
                Code::InvalidArgument,
                "image spec with a non-empty image is required"
            )
        );
    }
}
