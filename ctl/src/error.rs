//! sondectl's library errors: what was refused, what is missing, which command failed, and
//! which step failed on what. The commands (`cmd`) and the binary add their own words with
//! anyhow; everything below them returns [`Error`], so a caller can tell a refusal (bad
//! input, exit code 2 material) from a failure of the cluster, a daemon or the system.

/// Result with sondectl's library [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a library call of sondectl failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was asked cannot be done as asked (a flag, a file, an end that names something
    /// the lab or the cluster does not have): the message says why.
    #[error("{0}")]
    Refused(String),
    /// Something needed is not there (yet): a pod without an IP, a lab without a Service.
    #[error("{0}")]
    Missing(String),
    /// A daemon refused or failed a call, or did not answer: what it said, in words.
    #[error("{0}")]
    Daemon(String),
    /// A system command failed (the lab's `ip`, `tc`, `nft`), with what it printed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A step failed.
    #[error("{what}")]
    Failed {
        /// The step, in words.
        what: String,
        /// What made it fail.
        #[source]
        source: Source,
    },
    /// A failure passed on as it came.
    #[error(transparent)]
    Plain(Source),
}

/// What made a step fail.
#[derive(Debug, thiserror::Error)]
pub enum Source {
    /// The file system, a socket, a process.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The Kubernetes API server.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A kubeconfig that cannot be read or used.
    #[error(transparent)]
    KubeConfig(#[from] kube::config::KubeconfigError),
    /// No kubeconfig and no in-cluster service account.
    #[error(transparent)]
    InferConfig(#[from] kube::config::InferConfigError),
    /// Connecting to a daemon.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A daemon's answer to a call.
    #[error(transparent)]
    Status(#[from] tonic::Status),
    /// A JSON document.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A YAML document.
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
    /// A CSV writer.
    #[error(transparent)]
    Csv(#[from] csv::Error),
    /// An HTTP exchange (Pushgateway, metrics).
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// An HTTP request that cannot be built.
    #[error(transparent)]
    HttpRequest(#[from] hyper::http::Error),
    /// An address that does not parse.
    #[error(transparent)]
    Address(#[from] std::net::AddrParseError),
    /// A system call.
    #[error(transparent)]
    Errno(#[from] nix::errno::Errno),
    /// The results store.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The monitor's Lease.
    #[error(transparent)]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// An object's apiVersion.
    #[error(transparent)]
    GroupVersion(#[from] kube::core::gvk::ParseGroupVersionError),
    /// TLS: a certificate, key or handshake.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// A PEM file.
    #[error(transparent)]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// Issuing a certificate.
    #[error(transparent)]
    Certificate(#[from] rcgen::Error),
    /// A step of sondectl's own that failed first.
    #[error(transparent)]
    Sonde(Box<Error>),
    /// Anything else (a library with an error type of its own).
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl<E: Into<Source>> From<E> for Error {
    fn from(source: E) -> Self {
        Self::Plain(source.into())
    }
}

impl Error {
    /// A refusal with `message`.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::Refused(message.into())
    }

    /// A failure of another library (one without a variant in [`Source`]).
    pub fn other(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Failed {
            what: what.into(),
            source: Source::Other(Box::new(source)),
        }
    }
}

/// An error with its causes on one line (`a: b: c`), as sondectl prints a failure (tonic's
/// top-level message alone is just "transport error"); a cause already in the words is not
/// repeated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Words for a failure: what sondectl was doing (on a `Result`), or what it needed (on an
/// `Option`).
pub trait Context<T> {
    /// Fails with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;

    /// Fails with the words `what` makes (only when it fails).
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Source>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Failed {
            what: what.into(),
            source: source.into(),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Failed {
            what: what().into(),
            source: source.into(),
        })
    }
}

/// Words on top of a failure of sondectl's own.
pub trait Within<T> {
    /// Fails with `what`, caused by the error already there.
    fn within(self, what: impl Into<String>) -> Result<T>;

    /// As [`Within::within`], with words made only when it fails.
    fn within_with<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Within<T> for Result<T> {
    fn within(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|err| Error::Failed {
            what: what.into(),
            source: Source::Sonde(Box::new(err)),
        })
    }

    fn within_with<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|err| Error::Failed {
            what: what().into(),
            source: Source::Sonde(Box::new(err)),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Missing(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::Missing(what().into()))
    }
}

/// Returns a [`Error::Refused`] made with `format!`.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Refused(format!($($arg)*)))
    };
}
pub(crate) use refuse;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_cause_and_its_words() {
        let read: Result<String> =
            std::fs::read_to_string("/nonexistent/sonde").context("reading the inventory");
        let err = read.expect_err("no such file");
        assert_eq!(err.to_string(), "reading the inventory");
        assert!(matches!(
            &err,
            Error::Failed {
                source: Source::Io(io),
                ..
            } if io.kind() == std::io::ErrorKind::NotFound
        ));
        let nested = Err::<(), _>(err)
            .within("starting the lab")
            .expect_err("failed");
        assert_eq!(
            chain(&nested),
            "starting the lab: reading the inventory: No such file or directory (os error 2)"
        );
        let missing = None::<u8>.context("pod1 has no IP yet").expect_err("none");
        assert!(matches!(missing, Error::Missing(_)));
    }

    #[test]
    fn refuse_returns_a_refusal() {
        fn check(n: u8) -> Result<u8> {
            if n > 3 {
                refuse!("{n} is more than 3");
            }
            Ok(n)
        }
        assert!(matches!(check(4), Err(Error::Refused(message)) if message == "4 is more than 3"));
        assert_eq!(check(2).ok(), Some(2));
    }
}
