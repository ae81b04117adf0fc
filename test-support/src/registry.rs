//! A throw-away `docker-registry` process.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{run, FixtureError};
use crate::image::OciImage;
use crate::tls::TestCerts;
use crate::token::{TokenServer, ISSUER, SERVICE};

/// A running registry; killed and its storage removed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    // Declared before `dir`: stopped before its key files go.
    token: Option<TokenServer>,
    dir: TempDir,
    addr: String,
    basic_auth: Option<(String, String)>,
    certs: Option<TestCerts>,
}

/// How clients must authenticate.
enum Auth {
    Anonymous,
    Basic(String, String),
    Token(String, String),
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Result<Self, FixtureError> {
        Self::spawn(Auth::Anonymous, false)
    }

    /// Starts an anonymous registry that speaks HTTPS only, with a certificate for
    /// `127.0.0.1` from a new certificate authority ([`TestRegistry::ca_cert`]).
    pub fn start_with_tls() -> Result<Self, FixtureError> {
        Self::spawn(Auth::Anonymous, true)
    }

    /// The certificate (PEM) of the authority that signed the registry's certificate
    /// (only with TLS).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.certs.as_ref().map(|c| c.ca_cert.as_path())
    }

    /// Starts a registry that requires HTTP basic auth (htpasswd, bcrypt).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Self, FixtureError> {
        Self::spawn(Auth::Basic(user.to_string(), password.to_string()), false)
    }

    /// Starts a registry with token auth (Bearer challenge, JWTs from a token server
    /// that accepts `user`/`password`), as Docker Hub and most cloud registries do.
    pub fn start_with_token_auth(user: &str, password: &str) -> Result<Self, FixtureError> {
        Self::spawn(Auth::Token(user.to_string(), password.to_string()), false)
    }

    /// The identity (OAuth2 refresh) token the token server accepts (only with token
    /// auth).
    pub fn identity_token(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::identity_token)
    }

    /// A registry token for pulling `repository` (only with token auth).
    pub fn issue_token(&self, repository: &str) -> Result<String, FixtureError> {
        match &self.token {
            Some(t) => t.issue(repository),
            None => Err(FixtureError::NotReady(
                "this registry has no token auth".into(),
            )),
        }
    }

    fn spawn(auth: Auth, tls: bool) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("vmlet-registry-")
            .tempdir()?;
        // The port is picked by binding port 0 and released just before the registry binds
        // it; the window is small and a collision shows as a clear NotReady error.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let certs = if tls {
            let certs = TestCerts::generate(dir.path())?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certs.server_cert.display(),
                certs.server_key.display()
            ));
            Some(certs)
        } else {
            None
        };
        let mut token = None;
        let mut basic_auth = None;
        if let Auth::Token(user, pass) = &auth {
            let server = TokenServer::start(dir.path(), user, pass)?;
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                server.realm(),
                server.cert().display()
            ));
            token = Some(server);
            basic_auth = Some((user.clone(), pass.clone()));
        }
        if let Auth::Basic(user, pass) = &auth {
            basic_auth = Some((user.clone(), pass.clone()));
            let line = run(Command::new("htpasswd").args(["-Bbn", user, pass]))?;
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, line.trim())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: vmlet-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| FixtureError::Command {
                cmd: "docker-registry serve".into(),
                message: format!("{e} (is Debian's docker-registry installed? scripts/setup.sh)"),
            })?;
        let mut reg = Self {
            child: Some(child),
            token,
            dir,
            addr,
            basic_auth,
            certs,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<(), FixtureError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(FixtureError::NotReady(format!(
                        "exited with {status}: {}",
                        self.log()
                    )));
                }
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(FixtureError::NotReady(format!(
                    "timeout; log: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the blob `digest` (`sha256:<hex>`), to tamper with it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(""))
            .join(hex)
            .join("data")
    }

    /// Kills the registry (a registry dying mid-pull).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pushes `image` as `<repo>:<tag>` (or every platform of an index) and returns
    /// the full reference `<addr>/<repo>:<tag>`.
    pub fn push(&self, image: &OciImage, repo_tag: &str) -> Result<String, FixtureError> {
        self.push_as(image, repo_tag, false)
    }

    /// Like [`TestRegistry::push`], but converts the manifest to Docker schema2.
    pub fn push_docker_schema2(
        &self,
        image: &OciImage,
        repo_tag: &str,
    ) -> Result<String, FixtureError> {
        self.push_as(image, repo_tag, true)
    }

    fn push_as(
        &self,
        image: &OciImage,
        repo_tag: &str,
        schema2: bool,
    ) -> Result<String, FixtureError> {
        let dest = format!("{}/{repo_tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if image.is_index() {
            cmd.arg("--all");
        }
        if schema2 {
            cmd.args(["--format", "v2s2"]);
        }
        if let Some((u, p)) = &self.basic_auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!(
            "oci:{}:{}",
            image.layout_dir().display(),
            image.tag()
        ))
        .arg(format!("docker://{dest}"));
        run(&mut cmd)?;
        Ok(dest)
    }

    /// The temporary directory of this fixture (config, log, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}
