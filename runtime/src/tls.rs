//! Optional TLS for the gRPC servers, and mutual TLS for service-to-service
//! calls, from PEM files named in config (tonic's rustls TLS).
//!
//! Off unless `server.tls.cert_path` is set. With `client_ca_path` as well,
//! the server requires every client to present a certificate signed by that
//! CA: that is how auth can accept only task (and other trusted services).
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

fn read(key: &str, path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{key} = {path:?}: {e}"))
}

/// `[server.tls]`: the server's certificate, and the CA its clients' must
/// be signed by (mutual TLS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServerTls {
    /// PEM certificate chain; empty: plaintext HTTP/2.
    pub cert_path: String,
    /// PEM private key of the certificate.
    pub key_path: String,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca_path: String,
}

impl ServerTls {
    /// The tonic config these files describe; `None` when TLS is off.
    pub fn load(&self, service: &str) -> anyhow::Result<Option<ServerTlsConfig>> {
        if self.cert_path.is_empty() {
            return Ok(None);
        }
        let key = |k: &str| format!("{service}.server.tls.{k}");
        let identity = Identity::from_pem(
            read(&key("cert_path"), &self.cert_path)?,
            read(&key("key_path"), &self.key_path)?,
        );
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if !self.client_ca_path.is_empty() {
            let ca = read(&key("client_ca_path"), &self.client_ca_path)?;
            cfg = cfg
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(Some(cfg))
    }
}

/// TLS of a client of another memberflow service (task → auth).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClientTls {
    /// PEM CA bundle the server's certificate must chain to; empty: the
    /// system's roots (used when the address is `https://`).
    pub ca_path: String,
    /// PEM certificate and key this client presents (mutual TLS).
    pub cert_path: String,
    pub key_path: String,
    /// The name to verify the server's certificate against, when it differs
    /// from the address's host.
    pub domain: String,
}

impl ClientTls {
    /// An endpoint for `addr` (`http://` plaintext, `https://` TLS) with
    /// this TLS config; `key` names the settings in errors.
    pub fn endpoint(&self, key: &str, addr: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(addr.to_owned())?;
        let wanted = addr.starts_with("https://") || !self.ca_path.is_empty();
        if !wanted {
            return Ok(endpoint);
        }
        let mut cfg = ClientTlsConfig::new().with_native_roots();
        if !self.ca_path.is_empty() {
            cfg = cfg.ca_certificate(Certificate::from_pem(read(
                &format!("{key}.ca_path"),
                &self.ca_path,
            )?));
        }
        if !self.cert_path.is_empty() {
            cfg = cfg.identity(Identity::from_pem(
                read(&format!("{key}.cert_path"), &self.cert_path)?,
                read(&format!("{key}.key_path"), &self.key_path)?,
            ));
        }
        if !self.domain.is_empty() {
            cfg = cfg.domain_name(self.domain.clone());
        }
        Ok(endpoint.tls_config(cfg)?)
    }
}
