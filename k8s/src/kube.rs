//! A small Kubernetes API client: exactly the calls the plugin and the node monitor make (get and list
//! pods, get a node, merge-patch annotations, create an event). HTTP/1.1, one connection per call (the
//! call rate is a few per pod start); TLS with the service account's CA when in a cluster, plain HTTP
//! for a `http://` base URL (tests point it at a server on 127.0.0.1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::pods::{Node, Pod, PodList};

pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long one API call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum KubeError {
    /// The server answered with a non-2xx status.
    Status { status: u16, body: String },
    /// No answer: connection, TLS or timeout.
    Transport(String),
    /// An answer we could not decode.
    Decode(String),
}

impl KubeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Status { status: 404, .. })
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeError::Status { status, body } => {
                let body: String = body.chars().take(300).collect();
                write!(f, "API server answered {status}: {body}")
            }
            KubeError::Transport(m) => write!(f, "API server unreachable: {m}"),
            KubeError::Decode(m) => write!(f, "API server answer not understood: {m}"),
        }
    }
}

impl std::error::Error for KubeError {}

#[derive(Clone)]
pub struct KubeClient {
    host: String,
    port: u16,
    /// `Some` for https.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Re-read on every call: projected service account tokens are rotated.
    token_file: Option<PathBuf>,
}

impl KubeClient {
    /// The in-cluster client: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the service
    /// account's token and CA.
    pub fn in_cluster() -> Result<KubeClient, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            "KUBERNETES_SERVICE_HOST is not set (not running in a cluster?)".to_string()
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_string());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        KubeClient::new(
            &format!("https://{host}:{port}"),
            Some(dir.join("token")),
            Some(&dir.join("ca.crt")),
        )
    }

    /// A client for `base_url` (`http://host:port` or `https://host:port`). `ca_file` is required for
    /// https; `token_file`, when given, is sent as a bearer token.
    pub fn new(
        base_url: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<&Path>,
    ) -> Result<KubeClient, String> {
        let (https, rest) = if let Some(rest) = base_url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base_url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "API server URL {base_url:?} must start with http:// or https://"
            ));
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = split_host_port(authority, if https { 443 } else { 80 })
            .ok_or_else(|| format!("API server URL {base_url:?}: expected scheme://host[:port]"))?;
        let tls = if https {
            let ca_file = ca_file.ok_or_else(|| format!("{base_url}: https needs a CA file"))?;
            Some((tls_connector(ca_file)?, server_name(&host)?))
        } else {
            None
        };
        Ok(KubeClient {
            host,
            port,
            tls,
            token_file,
        })
    }

    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, KubeError> {
        let body = self
            .call(
                "GET",
                &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                None,
            )
            .await?;
        decode(&body)
    }

    /// Every pod bound to `node` (`fieldSelector=spec.nodeName=<node>`), in all namespaces.
    pub async fn list_node_pods(&self, node: &str) -> Result<Vec<Pod>, KubeError> {
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            percent_encode(node)
        );
        let body = self.call("GET", &path, None).await?;
        Ok(decode::<PodList>(&body)?.items)
    }

    pub async fn get_node(&self, name: &str) -> Result<Node, KubeError> {
        let body = self
            .call("GET", &format!("/api/v1/nodes/{name}"), None)
            .await?;
        decode(&body)
    }

    /// Sets (`Some`) or removes (`None`) annotations with a JSON merge patch.
    pub async fn patch_pod_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        self.call("PATCH", &path, Some(annotation_patch(annotations)))
            .await
            .map(drop)
    }

    pub async fn patch_node_annotations(
        &self,
        name: &str,
        annotations: &BTreeMap<String, Option<String>>,
    ) -> Result<(), KubeError> {
        self.call(
            "PATCH",
            &format!("/api/v1/nodes/{name}"),
            Some(annotation_patch(annotations)),
        )
        .await
        .map(drop)
    }

    /// Records a Warning or Normal event on a pod (what `kubectl describe pod` shows).
    pub async fn pod_event(
        &self,
        pod: &Pod,
        event_type: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        let now = crate::time::rfc3339(crate::time::now_epoch_secs());
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{}", pod.metadata.name, random_hex(8)),
                "namespace": pod.metadata.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "namespace": pod.metadata.namespace,
                "uid": pod.metadata.uid,
            },
            "type": event_type,
            "reason": reason,
            "message": message,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "vgpu-device-plugin"},
        });
        let path = format!("/api/v1/namespaces/{}/events", pod.metadata.namespace);
        let body = serde_json::to_vec(&event).map_err(|e| KubeError::Decode(e.to_string()))?;
        self.call("POST", &path, Some(("application/json", body)))
            .await
            .map(drop)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<u8>, KubeError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_once(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(KubeError::Transport(format!(
                "{method} {path}: no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    async fn call_once(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<u8>, KubeError> {
        let transport =
            |e: &dyn std::fmt::Display| KubeError::Transport(format!("{method} {path}: {e}"));
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("vgpu-device-plugin/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token_file) = &self.token_file {
            let token = std::fs::read_to_string(token_file)
                .map_err(|e| transport(&format!("{}: {e}", token_file.display())))?;
            request = request.header("authorization", format!("Bearer {}", token.trim()));
        }
        let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
        if method != "GET" {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| transport(&e))?;
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, self.port))
            .await
            .map_err(|e| transport(&e))?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| transport(&e))?;
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        }
        .map_err(|e| transport(&e))?;
        let (status, body) = response;
        if !(200..300).contains(&status) {
            return Err(KubeError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

async fn send<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, KubeError> {
    serde_json::from_slice(body).map_err(|e| KubeError::Decode(e.to_string()))
}

fn annotation_patch(annotations: &BTreeMap<String, Option<String>>) -> (&'static str, Vec<u8>) {
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    (
        "application/merge-patch+json",
        serde_json::to_vec(&patch).unwrap_or_default(),
    )
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    rustls::pki_types::ServerName::try_from(bare)
        .map_err(|e| format!("API server host {host:?}: {e}"))
}

fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `len` random bytes from the kernel as hex (event names, cache file names).
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // Not expected on Linux; fall back to the clock and pid, which are unique enough for a name.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID, as HAMi names cache files.
pub fn random_uuid() -> String {
    let hex = random_hex(16);
    let mut bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_authorities() {
        assert_eq!(
            split_host_port("10.96.0.1:443", 443),
            Some(("10.96.0.1".into(), 443))
        );
        assert_eq!(
            split_host_port("[fd00::1]:6443", 443),
            Some(("[fd00::1]".into(), 6443))
        );
        assert_eq!(split_host_port("example", 80), Some(("example".into(), 80)));
        assert_eq!(split_host_port("h:x", 80), None);
        assert!(KubeClient::new("ftp://x", None, None).is_err());
        assert!(
            KubeClient::new("https://x:1", None, None).is_err(),
            "https needs a CA"
        );
        assert!(KubeClient::new("http://127.0.0.1:8080/", None, None).is_ok());
    }

    #[test]
    fn random_uuid_is_v4() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, random_uuid());
    }

    #[test]
    fn patches_set_and_remove() {
        let mut a = BTreeMap::new();
        a.insert("x".to_string(), Some("1".to_string()));
        a.insert("y".to_string(), None);
        let (ct, body) = annotation_patch(&a);
        assert_eq!(ct, "application/merge-patch+json");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"metadata":{"annotations":{"x":"1","y":null}}}"#
        );
    }
}
