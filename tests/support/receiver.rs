//! A recording HTTP receiver for webhooks the binary sends (notifications): axum on
//! 127.0.0.1 in a thread of its own, answering 200 to every request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port); `url` ends in `path`.
    pub fn start(path: &str) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(
                    move |method: axum::http::Method,
                          uri: axum::http::Uri,
                          headers: axum::http::HeaderMap,
                          body: axum::body::Bytes| {
                        let sink = sink.clone();
                        async move {
                            let headers = (headers.iter())
                                .map(|(k, v)| {
                                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                                    (k.as_str().to_owned(), v)
                                })
                                .collect();
                            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                                serde_json::Value::String(String::from_utf8_lossy(&body).into())
                            });
                            sink.lock().unwrap().push(Received {
                                method: method.to_string(),
                                path: uri.path().to_owned(),
                                headers,
                                body,
                            });
                            "ok"
                        }
                    },
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let address = ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver listens");
        Receiver {
            url: format!("http://{address}{path}"),
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests arrived; panics after `timeout`.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                start.elapsed() < timeout,
                "{count} request(s) expected within {timeout:?}, got {received:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
