//! The backend registry and the rule that picks a backend.
//!
//! Each backend crate registers one [`Backend`] with [`inventory::submit!`]; linking the
//! crate into a program is enough to make it available. [`open`] is the one entry point
//! that turns a [`BackendChoice`] and an image into an opened [`GuestFs`].
//!
//! # The choice rule
//!
//! - A named backend is used if its probe reports that it can run here, and is an error
//!   otherwise.
//! - `auto` takes the registered backends in ascending [`Backend::auto_rank`] and uses the
//!   first whose probe reports that it can run for this image. The order is fixed before anything is
//!   opened. `guestfs` ranks before `localmount` because it never lets the host kernel
//!   parse the guest filesystem.
//! - Once a backend is chosen, its failure to open is the result. No other backend is tried
//!   after a failure, because that would hide the real error.

use std::error::Error as StdError;
use std::fmt;

use crate::image::ResolvedImage;
use crate::vfs::GuestFs;

/// A boxed error from a backend's constructor.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether a backend can run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The backend can run.
    Available,
    /// The backend cannot run. The reason names what is missing and what to do.
    Unavailable { reason: String },
}

impl Availability {
    /// Returns true for [`Availability::Available`].
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available)
    }
}

/// How to open an image with a backend.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The image, with format and partition settled.
    pub image: ResolvedImage,
    /// Open without any write access to the image.
    pub read_only: bool,
    /// Attach the image writable but mount every filesystem read-only, so that nothing on
    /// the image changes until [`GuestFs::enable_writes`] is called. Ignored when
    /// `read_only` is set.
    ///
    /// A read-write mount changes an ext4 image at once (the mount count and times in the
    /// superblock), so without this a request that fails while planning would still
    /// leave the image changed. A read-only mount writes nothing to a clean ext4 or btrfs
    /// filesystem. Two cases still write: a filesystem with a dirty journal or log is
    /// recovered at mount, because the device is writable, and XFS writes its log at
    /// unmount even when mounted read-only. (The clean cases were checked on Linux 6.18
    /// with loop devices.)
    pub defer_writes: bool,
    /// Backend-specific `KEY=VALUE` settings, passed to the backend as given.
    pub backend_settings: Vec<String>,
}

impl OpenOptions {
    /// Returns options for read-write access, with writes allowed at once and no backend
    /// settings.
    pub fn new(image: ResolvedImage) -> Self {
        Self {
            image,
            read_only: false,
            defer_writes: false,
            backend_settings: Vec::new(),
        }
    }
}

/// A registered backend.
pub struct Backend {
    /// The name users select it by, such as `localmount`.
    pub name: &'static str,
    /// One line saying what the backend does.
    pub summary: &'static str,
    /// Position in the `auto` order; lower ranks are tried first.
    pub auto_rank: u32,
    /// Says whether the backend can run here, for this image when one is given. Must be
    /// cheap: no appliance launch, no device attached.
    pub probe: fn(Option<&ResolvedImage>) -> Availability,
    /// Opens the image.
    pub open: fn(&OpenOptions) -> Result<Box<dyn GuestFs>, BoxError>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("auto_rank", &self.auto_rank)
            .finish_non_exhaustive()
    }
}

inventory::collect!(Backend);

/// Which backend to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The first backend in the documented order that can run here.
    #[default]
    Auto,
    /// The backend with this name.
    Named(String),
}

impl std::str::FromStr for BackendChoice {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "auto" {
            Self::Auto
        } else {
            Self::Named(s.to_owned())
        })
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// Errors from choosing and opening a backend.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No backend has this name.
    #[error("unknown backend {name:?}; registered backends: {known}")]
    UnknownBackend { name: String, known: String },
    /// The named backend cannot run here.
    #[error("backend {name} cannot run here: {reason}")]
    BackendUnavailable { name: &'static str, reason: String },
    /// `auto` found no backend that can run here.
    #[error("no backend can run here: {reasons}")]
    NoBackendAvailable { reasons: String },
    /// The image failed the checks every image passes before a backend opens it.
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The chosen backend failed to open the image.
    #[error("backend {backend} failed to open {image}")]
    Opening {
        backend: &'static str,
        image: String,
        #[source]
        source: BoxError,
    },
}

/// Returns every registered backend in `auto` order.
pub fn backends() -> Vec<&'static Backend> {
    let mut all: Vec<&'static Backend> = inventory::iter::<Backend>.into_iter().collect();
    all.sort_by_key(|backend| (backend.auto_rank, backend.name));
    all
}

/// Picks the backend for `choice` following the documented rule, without opening anything.
pub fn choose(
    choice: &BackendChoice,
    image: Option<&ResolvedImage>,
) -> Result<&'static Backend, RegistryError> {
    let all = backends();
    match choice {
        BackendChoice::Named(name) => {
            let backend = all
                .iter()
                .find(|backend| backend.name == name)
                .ok_or_else(|| RegistryError::UnknownBackend {
                    name: name.clone(),
                    known: names(&all),
                })?;
            match (backend.probe)(image) {
                Availability::Available => {
                    tracing::info!(backend = backend.name, "using the requested backend");
                    Ok(*backend)
                }
                Availability::Unavailable { reason } => Err(RegistryError::BackendUnavailable {
                    name: backend.name,
                    reason,
                }),
            }
        }
        BackendChoice::Auto => {
            let mut reasons = Vec::new();
            for backend in &all {
                match (backend.probe)(image) {
                    Availability::Available => {
                        tracing::info!(
                            backend = backend.name,
                            skipped = reasons.len(),
                            "auto chose the first backend that can run here"
                        );
                        return Ok(*backend);
                    }
                    Availability::Unavailable { reason } => {
                        tracing::debug!(backend = backend.name, %reason, "backend cannot run here");
                        reasons.push(format!("{}: {reason}", backend.name));
                    }
                }
            }
            if reasons.is_empty() {
                reasons.push("no backend is registered in this program".to_owned());
            }
            Err(RegistryError::NoBackendAvailable {
                reasons: reasons.join("; "),
            })
        }
    }
}

/// Chooses a backend, checks the image (see [`crate::preflight`]) and opens it with the
/// backend. A failure of the chosen backend is returned as is; no other backend is tried.
pub fn open(
    choice: &BackendChoice,
    options: &OpenOptions,
) -> Result<Box<dyn GuestFs>, RegistryError> {
    let backend = choose(choice, Some(&options.image))?;
    open_with(backend, options)
}

/// Checks the image (see [`crate::preflight`]) and opens it with a backend that [`choose`]
/// returned, for callers that report the choice before the slow open.
pub fn open_with(
    backend: &'static Backend,
    options: &OpenOptions,
) -> Result<Box<dyn GuestFs>, RegistryError> {
    crate::preflight::check_image(&options.image, options.read_only)?;
    let _span =
        tracing::info_span!("open", backend = backend.name, image = %options.image.path.display())
            .entered();
    (backend.open)(options).map_err(|source| RegistryError::Opening {
        backend: backend.name,
        image: options.image.path.display().to_string(),
        source,
    })
}

fn names(all: &[&'static Backend]) -> String {
    if all.is_empty() {
        return "none".to_owned();
    }
    all.iter()
        .map(|backend| backend.name)
        .collect::<Vec<_>>()
        .join(", ")
}
