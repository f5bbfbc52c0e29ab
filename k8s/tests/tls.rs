//! The API client over TLS, as in a cluster: the server certificate is checked against the CA file
//! (the service account's ca.crt), and a server the CA did not sign is refused. The server is
//! `openssl s_server -WWW` serving a node object from files; certificates are made with `openssl`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vgpu_k8s::kube::{KubeClient, KubeError};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_ca_and_server_cert(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=apiserver",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

fn start_server(dir: &Path) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-WWW",
            "-quiet",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let server = Server(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "s_server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_the_api_server_against_the_ca_file() {
    let dir = testkit::scratch_dir("tls");
    make_ca_and_server_cert(&dir, "cluster-ca");
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_ca_and_server_cert(&other, "other-ca");
    std::fs::create_dir_all(dir.join("api/v1/nodes")).unwrap();
    std::fs::write(
        dir.join("api/v1/nodes/node-a"),
        r#"{"metadata":{"name":"node-a","annotations":{"hami.io/mutex.lock":"x"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("token"), "secret-token\n").unwrap();
    let (_server, port) = start_server(&dir);
    let url = format!("https://127.0.0.1:{port}");

    let client = KubeClient::new(
        &url,
        Some(dir.join("token")),
        Some(&dir.join("cluster-ca.pem")),
    )
    .unwrap();
    let node = client.get_node("node-a").await.expect("GET over TLS");
    assert_eq!(node.metadata.name, "node-a");
    assert_eq!(node.metadata.annotations["hami.io/mutex.lock"], "x");

    let stranger = KubeClient::new(&url, None, Some(&other.join("other-ca.pem"))).unwrap();
    match stranger.get_node("node-a").await {
        Err(KubeError::Transport(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("a server the CA did not sign must be refused, got {other:?}"),
    }

    assert!(
        KubeClient::new(&url, None, Some(&dir.join("token"))).is_err(),
        "a CA file without certificates"
    );
}
