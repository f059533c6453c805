//! Embedding: run a service from Rust code, in the background or blocking, several per
//! process. Each background service gets its own thread and single-threaded runtime: the
//! service is isolated from its host and its hot path stays on one thread, which on this
//! hardware is several times faster than hopping between worker threads.

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::addresses::AddressesFile;
use crate::error::{Error, Result};
use crate::model::ServiceDef;
use crate::runtime::{run, Ready, RunOptions, StopReason};

/// A service ready to run.
#[derive(Debug)]
pub struct Service {
    def: ServiceDef,
    options: RunOptions,
    config_error: Option<String>,
}

impl Service {
    /// Wraps a definition with an empty config and no addresses.
    pub fn new(def: ServiceDef) -> Self {
        Service {
            def,
            options: RunOptions::default(),
            config_error: None,
        }
    }

    /// The config (a flat JSON object).
    pub fn config(mut self, config: Value) -> Self {
        match config {
            Value::Object(map) => self.options.config = map,
            other => {
                self.config_error = Some(format!("the config must be a JSON object, got {other}"))
            }
        }
        self
    }

    /// The addresses.
    pub fn addresses(mut self, addresses: AddressesFile) -> Self {
        self.options.addresses = addresses;
        self
    }

    /// All run options at once (the command line's, with the files' origins for errors).
    pub(crate) fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Bus security: each connection's and state's NULL or CURVE role and keys (default:
    /// every connection NULL, as Python 0.0.18 speaks).
    pub fn security(mut self, settings: crate::security::SecuritySettings) -> Self {
        self.options.security = Some(settings);
        self
    }

    /// The most publishers, pushers and replies get to leave the sockets at the end
    /// (default 1 s; each close returns as soon as its queue is out).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.options.linger = linger;
        self
    }

    /// The deadline in-flight work gets when the service stops (default 5 s).
    pub fn drain_timeout(mut self, deadline: Duration) -> Self {
        self.options.drain_timeout = deadline;
        self
    }

    /// Main mode (the CLI's `-m`): run the definition's `main`, a leading-edge service, and
    /// stop when it returns, instead of the service loop. Starting fails if there is no
    /// `main`.
    pub fn main_mode(mut self) -> Self {
        self.options.main_mode = true;
        self
    }

    /// Runs in the current async context until `stop` resolves (or, in main mode, `main`
    /// returns), then drains; `on_ready` sees the bound endpoints once the sockets are up.
    pub async fn run(
        self,
        stop: impl Future<Output = StopReason> + Send,
        on_ready: impl FnOnce(&Ready) + Send,
    ) -> Result<()> {
        if let Some(e) = self.config_error {
            return Err(Error::Config(e));
        }
        run(self.def, self.options, stop, on_ready).await
    }

    /// Runs on a background thread of its own, with its own single-threaded runtime; the
    /// handle waits for ready, stops, and joins (in main mode it finishes when `main`
    /// returns).
    pub fn run_in_background(self) -> ServiceHandle {
        self.spawn()
    }

    /// Runs on this thread until SIGINT or SIGTERM (in main mode, or until `main` returns).
    pub fn run_blocking(self) -> Result<()> {
        let rt = runtime()?;
        let signals = {
            let _in_runtime = rt.enter();
            os_signals()
        };
        rt.block_on(self.run(signals, |_| {}))
    }

    fn spawn(self) -> ServiceHandle {
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (ready_async_tx, ready_async) = watch::channel(None);
        // Dropped when the thread ends, however it ends: what the async waits wake on.
        let (alive, done) = watch::channel(());
        let token = stop.clone();
        let name = self.def.name().to_owned();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _alive = alive;
                let rt = runtime()?;
                let on_ready = {
                    let tx = ready_tx.clone();
                    let tx_async = ready_async_tx.clone();
                    move |r: &Ready| {
                        let _ = tx.send(Ok(r.clone()));
                        tx_async.send_replace(Some(Ok(r.clone())));
                    }
                };
                let stop_fut = async move {
                    token.cancelled().await;
                    StopReason::Requested
                };
                let result = rt.block_on(self.run(stop_fut, on_ready));
                if let Err(e) = &result {
                    let _ = ready_tx.send(Err(e.to_string()));
                    ready_async_tx.send_if_modified(|r| {
                        if r.is_none() {
                            *r = Some(Err(e.to_string()));
                        }
                        r.is_some()
                    });
                }
                result
            });
        let thread =
            thread.map_err(|e| Error::Other(format!("cannot start a thread for {name}: {e}")));
        ServiceHandle {
            name,
            stop,
            ready: ready_rx,
            ready_async,
            done,
            thread: Some(thread),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))
}

/// SIGINT or SIGTERM, whichever comes first.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// call it inside the runtime before starting the service, so that a signal arriving while the
/// service starts up (sockets bound, `init_function` running) leads to a graceful stop instead
/// of the default action, which kills the process.
pub fn os_signals() -> impl Future<Output = StopReason> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let installed = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            let (Ok(mut term), Ok(mut int)) = installed else {
                tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => StopReason::Sigterm,
                _ = int.recv() => StopReason::Sigint,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            StopReason::Sigint
        }
    }
}

/// A service running on a background thread.
///
/// Each wait has a blocking form for plain code and an `_async` form for async code (a
/// `#[tokio::test]`, a host service), which never blocks the caller's runtime. Dropping the
/// handle stops the service: from plain code it waits for the drain; inside a runtime it
/// does not wait (the service drains on its own thread and ends by itself), since blocking
/// there would stall every task of that runtime.
#[derive(Debug)]
pub struct ServiceHandle {
    name: String,
    stop: CancellationToken,
    ready: std_mpsc::Receiver<std::result::Result<Ready, String>>,
    ready_async: watch::Receiver<Option<std::result::Result<Ready, String>>>,
    done: watch::Receiver<()>,
    thread: Option<std::result::Result<std::thread::JoinHandle<Result<()>>, Error>>,
}

impl ServiceHandle {
    /// Waits until the sockets are up and returns their endpoints, or the error that stopped
    /// the service from starting.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Ready> {
        match self.ready.recv_timeout(timeout) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Error::Other(e)),
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(Error::Other(format!(
                "{} was not ready within {timeout:?}",
                self.name
            ))),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(Error::Other(format!(
                "{} stopped before it was ready",
                self.name
            ))),
        }
    }

    /// [`wait_ready`](Self::wait_ready) for async code.
    pub async fn wait_ready_async(&self, timeout: Duration) -> Result<Ready> {
        let mut rx = self.ready_async.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|r| r.clone()));
        match waited {
            Ok(Ok(Some(Ok(r)))) => Ok(r),
            Ok(Ok(Some(Err(e)))) => Err(Error::Other(e)),
            Ok(Ok(None)) => unreachable!("waited for Some"),
            Ok(Err(_)) => Err(Error::Other(format!(
                "{} stopped before it was ready",
                self.name
            ))),
            Err(_) => Err(Error::Other(format!(
                "{} was not ready within {timeout:?}",
                self.name
            ))),
        }
    }

    /// [`stop`](Self::stop) for async code.
    pub async fn stop_async(mut self) -> Result<()> {
        self.stop.cancel();
        self.finished().await;
        self.take_join()
    }

    /// [`join`](Self::join) for async code.
    pub async fn join_async(mut self) -> Result<()> {
        self.finished().await;
        self.take_join()
    }

    /// Waits, without blocking, until the service thread has ended.
    async fn finished(&mut self) {
        while self.done.changed().await.is_ok() {}
    }

    /// True once the service has finished (main returned, stopped, or failed).
    pub fn is_finished(&self) -> bool {
        matches!(&self.thread, Some(Ok(t)) if t.is_finished())
    }

    /// Stops gracefully (in-flight work finishes within the drain deadline) and waits.
    pub fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        self.take_join()
    }

    /// Waits for the service to finish by itself (main mode).
    pub fn join(mut self) -> Result<()> {
        self.take_join()
    }

    fn take_join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(Ok(t)) => t
                .join()
                .map_err(|_| Error::Other(format!("{} panicked", self.name)))?,
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        // A dropped handle stops its service rather than leaking a thread that serves forever.
        self.stop.cancel();
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside a runtime: joining would block its tasks for the whole drain. The
            // thread ends by itself once drained.
            return;
        }
        let _ = self.take_join();
    }
}
