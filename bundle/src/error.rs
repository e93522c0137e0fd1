/// Why a bundle was refused. Every variant has a stable [`code`](BundleError::code) that
/// the API answers with; messages say what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a vdc bundle (the stream does not start with the bundle magic)")]
    BadMagic,
    #[error("the bundle is truncated: {0}")]
    Truncated(String),
    #[error("the bundle's framing is invalid: {0}")]
    BadFrame(String),
    #[error("the manifest is not valid: {0}")]
    InvalidManifest(String),
    #[error("bundle format version {found} is newer than this vdc reads (up to {supported}); upgrade vdc")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("the manifest's signature does not verify")]
    BadSignature,
    #[error("the bundle is signed by key {0}, which this site does not trust (add it to [bundles] trusted_keys)")]
    UntrustedKey(String),
    #[error("invalid public key: {0}")]
    BadKey(String),
    #[error("chunk {0}: its bytes do not match its hash")]
    ChunkHashMismatch(String),
    #[error("blob {0}: its chunks do not make the blob its hash names")]
    BlobHashMismatch(String),
    #[error("chunk {0} is not listed in the manifest")]
    ChunkNotInManifest(String),
    #[error("chunk {0} appears twice")]
    DuplicateChunk(String),
    #[error("chunk {0} is listed in the manifest but not in the stream")]
    MissingChunk(String),
    #[error(
        "chunk {0} is sent as held by this site (a reference frame), but this site holds no such chunk \
         for the account: push again (the target answers which chunks it lacks), or import a full bundle"
    )]
    ChunkNotHeld(String),
    #[error(
        "chunk {0} was left out by the sender (a push leaves out what this site said its import would not \
         store), but the import needs it now (something changed here since): push again"
    )]
    ChunkLeftOut(String),
    #[error("chunk {hash} decompresses beyond its listed size of {size} bytes")]
    ChunkTooLarge { hash: String, size: u64 },
    #[error("too many {what}: {count} (at most {max})")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    DanglingReference(String),
    #[error("{0}")]
    DuplicateId(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The code of [`BundleError::ChunkLeftOut`], also given when an import finds it needs
/// a chunk the push left out before it reads one.
pub const CHUNK_LEFT_OUT: &str = "bundle_chunk_left_out";

impl BundleError {
    /// The stable code of this refusal (`bundle_…`).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::BadMagic => "bundle_bad_magic",
            BundleError::Truncated(_) => "bundle_truncated",
            BundleError::BadFrame(_) => "bundle_bad_frame",
            BundleError::InvalidManifest(_) => "bundle_invalid_manifest",
            BundleError::UnsupportedVersion { .. } => "bundle_unsupported_version",
            BundleError::BadSignature => "bundle_bad_signature",
            BundleError::UntrustedKey(_) => "bundle_untrusted_key",
            BundleError::BadKey(_) => "bundle_bad_key",
            BundleError::ChunkHashMismatch(_) | BundleError::BlobHashMismatch(_) => "bundle_chunk_mismatch",
            BundleError::ChunkNotInManifest(_) => "bundle_chunk_unlisted",
            BundleError::DuplicateChunk(_) => "bundle_chunk_duplicate",
            BundleError::MissingChunk(_) => "bundle_chunk_missing",
            BundleError::ChunkTooLarge { .. } => "bundle_chunk_too_large",
            BundleError::ChunkNotHeld(_) => "bundle_chunk_not_held",
            BundleError::ChunkLeftOut(_) => CHUNK_LEFT_OUT,
            BundleError::TooMany { .. } => "bundle_too_many",
            BundleError::InvalidName(_) => "bundle_invalid_name",
            BundleError::DanglingReference(_) => "bundle_dangling_reference",
            BundleError::DuplicateId(_) => "bundle_duplicate_id",
            BundleError::Io(_) => "bundle_io",
        }
    }
}
