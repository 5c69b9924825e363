//! TLS: the only way in. Certificates come from configuration, or are generated on first
//! start (a local CA plus a server certificate signed by it) and reused afterwards.
//!
//! Invariants:
//! - Private keys are written with mode 0600 and never logged.
//! - The server certificate in use is re-read when its files change, so an operator can
//!   rotate it without a restart; a broken replacement is logged and the old one kept.
//! - Only TLS 1.2 and 1.3, with ring's suites, which are all AEAD (AES-GCM, ChaCha20-Poly1305)
//!   with an ephemeral key exchange; rustls has no compression, refuses renegotiation and,
//!   left at its default, accepts no 0-RTT data. ALPN offers `h2`, then `http/1.1`.
//!   `tests/clients/tls.rs` confirms it from outside, with openssl probes and sslyze.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Files of the certificate the server presents.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set when Bulwark generated the certificate: the CA clients must trust.
    pub generated_ca: Option<PathBuf>,
}

const CA_NAME: &str = "Bulwark local CA";

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Bulwark");
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The names the generated server certificate must cover.
pub fn wanted_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hostname());
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Makes sure `<dir>` holds a CA and a server certificate covering `names`, generating what is
/// missing. Returns the files and whether anything was generated now.
pub fn ensure_generated(dir: &Path, names: &[String]) -> anyhow::Result<(CertificateFiles, bool)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    let names_path = dir.join("server.names");
    let mut generated = false;

    let ca_key = if ca_key_path.exists() && ca_cert_path.exists() {
        KeyPair::from_pem(&fs::read_to_string(&ca_key_path)?)
            .context("reading the generated CA key")?
    } else {
        let key = KeyPair::generate()?;
        let mut params = ca_params()?;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key)?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        write_public(&ca_cert_path, &cert.pem())?;
        // A new CA invalidates any server certificate signed by an old one.
        let _ = fs::remove_file(&cert_path);
        generated = true;
        key
    };

    let recorded = fs::read_to_string(&names_path).unwrap_or_default();
    let covered: Vec<&str> = recorded.lines().collect();
    let complete = names.iter().all(|name| covered.contains(&name.as_str()));
    if !(cert_path.exists() && key_path.exists() && complete) {
        let ca_cert_pem = fs::read_to_string(&ca_cert_path)?;
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &format!("{}{}", cert.pem(), ca_cert_pem))?;
        write_public(&names_path, &names.join("\n"))?;
        generated = true;
    }
    Ok((
        CertificateFiles {
            cert: cert_path,
            key: key_path,
            generated_ca: Some(ca_cert_path),
        },
        generated,
    ))
}

fn load_certified_key(files: &CertificateFiles) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|err| anyhow!("unsupported private key in {}: {err}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|err| {
        anyhow!(
            "{} does not match {}: {err}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(certified)
}

/// When the certificate and key files were last modified, if both exist.
type Stamp = Option<(SystemTime, SystemTime)>;

fn modified(files: &CertificateFiles) -> Stamp {
    let cert = fs::metadata(&files.cert).and_then(|m| m.modified()).ok()?;
    let key = fs::metadata(&files.key).and_then(|m| m.modified()).ok()?;
    Some((cert, key))
}

/// Presents the current certificate and notices when its files change.
#[derive(Debug)]
pub struct ReloadingResolver {
    files: CertificateFiles,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl ReloadingResolver {
    pub fn new(files: CertificateFiles) -> anyhow::Result<ReloadingResolver> {
        let stamp = modified(&files);
        let key = load_certified_key(&files)?;
        Ok(ReloadingResolver {
            files,
            current: RwLock::new((Arc::new(key), stamp)),
        })
    }

    /// Re-reads the files if they changed since the last look.
    pub fn refresh(&self) {
        let stamp = modified(&self.files);
        let unchanged = self
            .current
            .read()
            .map(|current| current.1 == stamp)
            .unwrap_or(true);
        if unchanged || stamp.is_none() {
            return;
        }
        match load_certified_key(&self.files) {
            Ok(key) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (Arc::new(key), stamp);
                }
                tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate from {}", self.files.cert.display());
            }
            Err(err) => {
                // A half-written replacement is normal while files are being copied; try again later.
                tracing::warn!("keeping the current TLS certificate: {err:#}");
            }
        }
    }

    /// Checks the files every `period`, for as long as the resolver lives.
    pub fn watch(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                match weak.upgrade() {
                    Some(resolver) => resolver.refresh(),
                    None => return,
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.0.clone())
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1) around `resolver`.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What an operator must do to make clients trust a generated CA.
pub fn trust_instructions(ca: &Path, host_port: &str) -> String {
    let ca = ca.canonicalize().unwrap_or_else(|_| ca.to_path_buf());
    let ca = ca.display();
    format!(
        "Bulwark serves HTTPS with a certificate from its own local CA:\n  {ca}\n\
         Trust it on each client machine before pushing or pulling (replace {host_port} with the name clients use):\n  \
         docker:        sudo mkdir -p /etc/docker/certs.d/{host_port} && sudo cp {ca} /etc/docker/certs.d/{host_port}/ca.crt\n  \
         podman/skopeo/buildah: sudo mkdir -p /etc/containers/certs.d/{host_port} && sudo cp {ca} /etc/containers/certs.d/{host_port}/ca.crt\n  \
         or per command: mkdir -p ./certs && cp {ca} ./certs/ca.crt && skopeo inspect --cert-dir ./certs docker://{host_port}/REPO:TAG\n  \
         curl:          curl --cacert {ca} https://{host_port}/v2/"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses_and_extends_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = wanted_names(&[]);
        let (files, generated) = ensure_generated(dir.path(), &names).expect("generate");
        assert!(generated);
        let first = fs::read(&files.cert).expect("cert");
        let (_, generated) = ensure_generated(dir.path(), &names).expect("reuse");
        assert!(!generated, "a second start reuses the certificate");
        assert_eq!(fs::read(&files.cert).expect("cert"), first);

        let ca = fs::read(dir.path().join("ca.crt")).expect("ca");
        let more = wanted_names(&["registry.test".into()]);
        let (_, generated) = ensure_generated(dir.path(), &more).expect("extend");
        assert!(generated, "a new name gets a new server certificate");
        assert_eq!(
            fs::read(dir.path().join("ca.crt")).expect("ca"),
            ca,
            "from the same CA"
        );
        ReloadingResolver::new(files).expect("the generated pair loads");

        let mode = fs::metadata(dir.path().join("ca.key"))
            .expect("key")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (files, _) = ensure_generated(dir.path(), &wanted_names(&[])).expect("generate");
        let wrong = CertificateFiles {
            key: dir.path().join("ca.key"),
            ..files
        };
        assert!(ReloadingResolver::new(wrong).is_err());
    }
}
