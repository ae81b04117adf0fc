//! Certificates for a registry served over TLS: a throw-away certificate authority and
//! a server certificate for `127.0.0.1` it signed, made with the `openssl` command line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{run, FixtureError};

/// The files of a test certificate authority and the server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The authority's certificate (PEM): what a client must trust.
    pub ca_cert: PathBuf,
    /// The server's certificate (PEM), for `IP:127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

impl TestCerts {
    /// Makes a new authority and server certificate in `dir`.
    pub fn generate(dir: &Path) -> Result<Self, FixtureError> {
        let path = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=vmlet test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(path("ca.key"))
            .arg("-out")
            .arg(path("ca.crt")))?;
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(path("server.key"))
            .arg("-out")
            .arg(path("server.csr")))?;
        fs::write(
            path("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "1"])
            .arg("-in")
            .arg(path("server.csr"))
            .arg("-CA")
            .arg(path("ca.crt"))
            .arg("-CAkey")
            .arg(path("ca.key"))
            .arg("-extfile")
            .arg(path("server.ext"))
            .arg("-out")
            .arg(path("server.crt")))?;
        Ok(TestCerts {
            ca_cert: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_verifies_against_the_authority_only() {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCerts::generate(dir.path()).unwrap();
        let verify = |ca: &Path| {
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .args(["-verify_ip", "127.0.0.1", "-purpose", "sslserver"])
                .arg(&certs.server_cert)
                .output()
                .unwrap()
        };
        let ok = verify(&certs.ca_cert);
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout),
            format!("{}: OK\n", certs.server_cert.display())
        );
        // Another authority does not vouch for it.
        let other = tempfile::tempdir().unwrap();
        let other = TestCerts::generate(other.path()).unwrap();
        let bad = verify(&other.ca_cert);
        assert!(!bad.status.success());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("unable to get local issuer certificate")
                || String::from_utf8_lossy(&bad.stdout)
                    .contains("unable to get local issuer certificate"),
            "{bad:?}"
        );
    }
}
