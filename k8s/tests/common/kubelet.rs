//! An in-test kubelet: the `Registration` service on `kubelet.sock`, and a client for the plugin's
//! socket, both over the real v1beta1 protocol.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use vgpu_k8s::api::v1beta1::device_plugin_client::DevicePluginClient;
use vgpu_k8s::api::v1beta1::registration_server::{Registration, RegistrationServer};
use vgpu_k8s::api::v1beta1::{Empty, RegisterRequest};

struct Recorder {
    accepted: mpsc::UnboundedSender<RegisterRequest>,
    /// Registrations still to refuse (as a kubelet does when the resource name is taken).
    refuse: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let refused = self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            return Err(Status::invalid_argument(
                "resource name nvidia.com/gpu is already taken (test)",
            ));
        }
        let _ = self.accepted.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

pub struct FakeKubelet {
    pub dir: PathBuf,
    registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    sender: mpsc::UnboundedSender<RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    refuse: Arc<AtomicUsize>,
}

impl FakeKubelet {
    pub fn start(dir: &Path) -> FakeKubelet {
        let (sender, registrations) = mpsc::unbounded_channel();
        let mut kubelet = FakeKubelet {
            dir: dir.to_path_buf(),
            registrations,
            sender,
            stop: None,
            task: None,
            refuse: Arc::new(AtomicUsize::new(0)),
        };
        kubelet.serve();
        kubelet
    }

    fn serve(&mut self) {
        let socket = self.dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind kubelet.sock");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = RegistrationServer::new(Recorder {
            accepted: self.sender.clone(),
            refuse: self.refuse.clone(),
        });
        self.task = Some(tokio::spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("kubelet registration server");
        }));
        self.stop = Some(stop_tx);
    }

    /// What a kubelet restart looks like to a plugin: the registration server goes away, every file
    /// in the device plugin directory is removed (the plugin's socket too), and a new `kubelet.sock`
    /// appears.
    pub async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.serve();
    }

    /// Refuses the next `n` registrations.
    pub fn refuse_next(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
    }

    /// The next registration the kubelet accepted.
    pub async fn next_registration(&mut self) -> RegisterRequest {
        super::within("a RegisterRequest", self.registrations.recv())
            .await
            .expect("registration channel")
    }

    /// Connects to the plugin's endpoint as the kubelet does after a registration.
    pub async fn connect(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        let path = self.dir.join(endpoint);
        let channel = Endpoint::from_static("http://[::1]:1")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .expect("connect to the plugin's socket");
        DevicePluginClient::new(channel)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
