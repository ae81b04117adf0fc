//! A minimal token server for the registry's `token` auth (the Docker Hub scheme): the
//! registry answers 401 with a `Bearer realm=...` challenge, the client fetches a JWT
//! from the realm with basic auth and presents it.
//!
//! Hand-written on purpose: it is a test fixture that must stay dependency-free. HTTP is
//! one request per connection (`Connection: close`); JWTs are RS256 signed by the
//! `openssl` command line with a throw-away key whose self-signed certificate the registry
//! trusts (`rootcertbundle`) and which each token carries in its `x5c` header.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

use crate::error::FixtureError;

/// The issuer and service names the registry is configured with.
pub const ISSUER: &str = "vmlet-test-issuer";
/// The service (token audience).
pub const SERVICE: &str = "vmlet-test-registry";

/// Key material and the accepted credentials.
#[derive(Clone)]
struct Signer {
    key: PathBuf,
    cert_der_b64: String,
    user: String,
    password: String,
}

impl Signer {
    /// The refresh token this server accepts (what `docker login` would have stored as
    /// `identitytoken`).
    fn identity_token(&self) -> String {
        format!("refresh-{}", self.user)
    }

    /// A JWT granting pull and push on each repository of `scopes`
    /// (`repository:<name>:<actions>`).
    fn token(&self, subject: &str, scopes: &[String]) -> Result<String, FixtureError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let access: Vec<_> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name) = (parts.next()?, parts.next()?);
                Some(json!({"type": kind, "name": name, "actions": ["pull", "push"]}))
            })
            .collect();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]});
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 3600,
            "nbf": now.saturating_sub(60),
            "iat": now.saturating_sub(60),
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(signing_input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(FixtureError::Command {
                cmd: "openssl dgst -sign".into(),
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(out.stdout)
        ))
    }
}

/// A running token server; stopped on drop.
pub struct TokenServer {
    addr: String,
    cert: PathBuf,
    signer: Signer,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Creates a key pair under `dir` and serves tokens to `user`/`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Self, FixtureError> {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=vmlet-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()?;
        if !out.status.success() {
            return Err(FixtureError::Command {
                cmd: "openssl req".into(),
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()?;
        let signer = Signer {
            key,
            cert_der_b64: STANDARD.encode(der.stdout),
            user: user.to_string(),
            password: password.to_string(),
        };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (signer, stop) = (signer.clone(), Arc::clone(&stop));
            std::thread::spawn(move || serve(listener, signer, stop))
        };
        Ok(Self {
            addr,
            cert,
            signer,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm URL for the registry config.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry must trust.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The identity (refresh) token the server accepts (CRI `identity_token`).
    pub fn identity_token(&self) -> String {
        self.signer.identity_token()
    }

    /// A token for pulling `repository`, as an identity provider would hand to kubelet
    /// (CRI `registry_token`).
    pub fn issue(&self, repository: &str) -> Result<String, FixtureError> {
        self.signer.token(
            &self.signer.user,
            &[format!("repository:{repository}:pull")],
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, signer: Signer, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = handle(conn, &signer);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Percent-decoding of a query value (scopes contain `:` and `/`, often encoded).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let value = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = value {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(conn: TcpStream, signer: &Signer) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    // GET: parameters in the query, credentials in basic auth. POST (the OAuth2 form):
    // parameters in a form body, with a refresh token instead of credentials.
    let params = if method == "POST" {
        let mut body = vec![0u8; content_length.min(64 * 1024)];
        reader.read_exact(&mut body)?;
        String::from_utf8_lossy(&body).into_owned()
    } else {
        target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .to_string()
    };
    let param = |name: &str| -> Vec<String> {
        params
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| url_decode(v))
            .collect()
    };
    let scopes: Vec<String> = param("scope")
        .iter()
        .flat_map(|v| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", signer.user, signer.password))
    );
    let authorized = if method == "POST" {
        param("grant_type").first().map(String::as_str) == Some("refresh_token")
            && param("refresh_token").first() == Some(&signer.identity_token())
    } else {
        authorization.as_deref() == Some(expected.as_str())
    };
    let mut conn = conn;
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        return write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let token = match signer.token(&signer.user, &scopes) {
        Ok(t) => t,
        Err(e) => {
            let body = e.to_string();
            return write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    };
    let body = json!({"token": token, "access_token": token, "expires_in": 3600}).to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
