//! TLS for the client API and for peer traffic (rustls with ring).
//!
//! One port serves both, so one server configuration does both jobs:
//! * every connection is TLS; the node presents `--cert-file`/`--key-file`;
//! * a client *may* present a certificate. If it does, it must be signed by
//!   `--trusted-ca-file` or the handshake fails. Clients of the KV API
//!   (curl, raftkvctl) need none; `/raft/*` refuses a connection without
//!   one (`require_member`), and the certificate must name the member the
//!   message claims to come from: DNS name `member-<id>.raftkv` among its
//!   subject alternative names (`scripts/gen-certs.sh` makes such
//!   certificates). So a client certificate of the cluster CA for one
//!   member cannot speak for another.
//! * outgoing peer requests (replication, forwarding to the leader,
//!   `--join`) present the node's own certificate and accept only servers
//!   whose certificate the same CA signed.
//!
//! **Reload without a restart:** the server's certificate resolver and the
//! verifiers read the loaded material through a lock on every handshake, so
//! `reload` (on SIGHUP) takes effect for the next connection; connections
//! already open keep what they negotiated. A reload that fails (a missing
//! file, a key that does not match) keeps the old material and says why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The files a node's TLS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What one load of the files gave.
struct Loaded {
    key: Arc<CertifiedKey>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
    /// The node certificate's first bytes of SHA-256, for the log.
    fingerprint: String,
}

/// A node's TLS material, reloadable. Shared by the server and every client.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// The DNS name a member's certificate carries: `member-<id>.raftkv`.
pub fn member_name(id: u64) -> String {
    format!("member-{id}.raftkv")
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Loaded, String> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let key = CertifiedKey::from_der(chain.clone(), key, provider)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca)? {
        roots.add(ca).map_err(|e| format!("{}: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let digest = crate::auth::digest_bytes(&chain[0]);
    let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(Loaded { key: Arc::new(key), clients, servers, fingerprint })
}

impl Tls {
    /// Loads and checks the files (certificate and key match, CA parses).
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&files, &provider)?;
        Ok(Arc::new(Tls { files, provider, current: RwLock::new(Arc::new(loaded)) }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again; on success later handshakes use them.
    /// Returns the new certificate's fingerprint.
    pub fn reload(&self) -> Result<String, String> {
        let loaded = load(&self.files, &self.provider)?;
        let fp = loaded.fingerprint.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(fp)
    }

    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// For the HTTP server: this node's certificate, optional client
    /// certificates checked against the CA.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let mut c = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(Clients(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }

    /// For requests to peers: servers checked against the CA, this node's
    /// certificate presented as the client's.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, String> {
        let c = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Servers(self.clone())))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        Ok(c)
    }
}

/// Whether the (CA-verified) certificate `cert` names member `id`.
pub fn names_member(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(member_name(id)) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Presents the node's current certificate, to clients and to servers.
#[derive(Debug)]
struct Resolver(Arc<Tls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The signature checks of a verifier that delegates to the current
/// material's verifier `$field` (the same three methods in both traits).
macro_rules! signatures_of {
    ($field:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.current().$field.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.current().$field.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.current().$field.supported_verify_schemes()
        }
    };
}

/// The current CA's client verifier (certificates optional).
#[derive(Debug)]
struct Clients(Arc<Tls>);

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: they would borrow from material a reload replaces, and
    // clients with one certificate (every peer) do not need them.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().clients.verify_client_cert(end_entity, intermediates, now)
    }

    signatures_of!(clients);
}

/// The current CA's server verifier.
#[derive(Debug)]
struct Servers(Arc<Tls>);

impl ServerCertVerifier for Servers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().servers.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    signatures_of!(servers);
}
