//! An in-test API server on 127.0.0.1: pods and nodes as JSON, merge patches applied like the real
//! one (RFC 7386), every request recorded so tests can check what the plugin wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    pods: Vec<Value>,
    nodes: Vec<Value>,
    requests: Vec<Recorded>,
    /// Answer 500 to everything (an API server outage).
    failing: bool,
}

pub struct FakeApiServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    pub fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = handle(conn, &s);
                }
            }
        });
        FakeApiServer {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add_node(&self, name: &str, annotations: Value) {
        self.state
            .lock()
            .unwrap()
            .nodes
            .push(json!({"metadata": {"name": name, "annotations": annotations}}));
    }

    pub fn add_pod(&self, pod: Value) {
        self.state.lock().unwrap().pods.push(pod);
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Value {
        let state = self.state.lock().unwrap();
        state
            .pods
            .iter()
            .find(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    }

    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.state.lock().unwrap().pods.retain(|p| {
            !(p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)
        });
    }

    pub fn node(&self, name: &str) -> Value {
        let state = self.state.lock().unwrap();
        state
            .nodes
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests other than reads.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A minimal pod: Pending on `node` with the given containers.
pub fn pod(namespace: &str, name: &str, uid: &str, containers: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": {},
                     "creationTimestamp": "2025-11-29T10:00:00Z"},
        "spec": {"nodeName": super::NODE, "containers": containers},
        "status": {"phase": "Pending"}
    })
}

fn handle(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    let mut content_type = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let (status, answer) = {
        let mut state = state.lock().unwrap();
        state.requests.push(Recorded {
            method: method.clone(),
            path: target.clone(),
            content_type,
            body: body.clone(),
        });
        if state.failing {
            (500, json!({"kind": "Status", "message": "injected outage"}))
        } else {
            route(&mut state, &method, &target, body)
        }
    };
    let text = answer.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        _ => "Error",
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

fn route(state: &mut State, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = (
        404,
        json!({"kind": "Status", "code": 404, "message": format!("{path} not found")}),
    );
    match (method, segments.as_slice()) {
        ("GET", ["api", "v1", "pods"]) => {
            let selector = query
                .strip_prefix("fieldSelector=")
                .map(|s| s.replace("%3D", "="))
                .unwrap_or_default();
            let node = selector.strip_prefix("spec.nodeName=").unwrap_or("");
            let items: Vec<Value> = state
                .pods
                .iter()
                .filter(|p| p["spec"]["nodeName"] == node)
                .cloned()
                .collect();
            (200, json!({"kind": "PodList", "items": items}))
        }
        ("GET" | "PATCH", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let Some(pod) = state
                .pods
                .iter_mut()
                .find(|p| p["metadata"]["namespace"] == *ns && p["metadata"]["name"] == *name)
            else {
                return not_found;
            };
            if let Some(patch) = body.filter(|_| method == "PATCH") {
                merge_patch(pod, &patch);
            }
            (200, pod.clone())
        }
        ("GET" | "PATCH", ["api", "v1", "nodes", name]) => {
            let Some(node) = state
                .nodes
                .iter_mut()
                .find(|n| n["metadata"]["name"] == *name)
            else {
                return not_found;
            };
            if let Some(patch) = body.filter(|_| method == "PATCH") {
                merge_patch(node, &patch);
            }
            (200, node.clone())
        }
        ("POST", ["api", "v1", "namespaces", _, "events"]) => (201, body.unwrap_or(Value::Null)),
        _ => not_found,
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
