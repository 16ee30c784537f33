//! The body of one capability link, and its Cap'n Proto encoding (`CapabilityBody` in
//! `schema/capability.capnp`).
//!
//! Encoding always yields the canonical single-segment form, framed with the standard segment
//! table, so a body has exactly one byte string when minted here. Decoding accepts any valid
//! encoding (other languages need not canonicalize), under reader limits, and rejects trailing bytes.

use std::collections::BTreeMap;

use capnp::message::{self, ReaderOptions};
use capnp::serialize;
use psp_schema::capability_capnp::{
    archive_set, capability_body, collection_grant, key_selector, operation, row_selector, scope,
};
use psp_schema::query_capnp::value;

use super::{CapabilityError, CapabilityId};
use crate::archive_set::{ArchiveDigest, LinkArchives, SetCommitment};
use crate::identity::PublicKey;
use crate::rows::{KeyRange, KeySelector, RowKey, RowSelector};
use crate::scope::{CollectionGrant, Collections, CommandDigest, FieldSet, Operation, Scope};
use crate::window::Window;

/// The body format version this crate reads and writes (`formatVersion` in the schema).
pub const FORMAT_VERSION: u16 = psp_schema::capability_capnp::FORMAT_VERSION;

/// Deepest struct nesting a body may use. A well-formed body nests at most five levels
/// (body > scope > grant > selector > range > value); the margin costs nothing.
const NESTING_LIMIT: i32 = 16;

/// Everything one link grants, as signed by its issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CapabilityBody {
    /// Random id naming this link in revocation lists and logs.
    pub id: CapabilityId,
    /// The key that signs this link.
    pub issuer: PublicKey,
    /// The key this link is granted to.
    pub holder: PublicKey,
    /// The signature of the parent link (`None` for a root).
    pub parent: Option<[u8; 64]>,
    /// The archives it is good for, as the body names them.
    pub archives: LinkArchives,
    /// What it allows there.
    pub scope: Scope,
    /// When.
    pub window: Window,
}

impl CapabilityBody {
    /// The canonical serialized message: segment table plus one canonical segment.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = message::Builder::new_default();
        self.write(message.init_root());
        let words = message
            .into_reader()
            .canonicalize()
            .expect("a message built in memory is always readable");
        let bytes = capnp::Word::words_to_bytes(&words);
        let mut framed = Vec::with_capacity(8 + bytes.len());
        // Segment table of a one-segment message: (segment count - 1) then its size in words.
        framed.extend_from_slice(&0u32.to_le_bytes());
        framed.extend_from_slice(&(words.len() as u32).to_le_bytes());
        framed.extend_from_slice(bytes);
        framed
    }

    fn write(&self, mut body: capability_body::Builder<'_>) {
        body.set_version(FORMAT_VERSION);
        body.set_id(&self.id.0);
        body.set_issuer(self.issuer.as_bytes());
        body.set_holder(self.holder.as_bytes());
        if let Some(parent) = &self.parent {
            body.set_parent(parent);
        }
        body.set_not_before(self.window.not_before());
        body.set_not_after(self.window.not_after());
        match &self.archives {
            LinkArchives::Any => body.reborrow().init_archives().set_any_archive(()),
            LinkArchives::Listed(members) => {
                let bytes: Vec<u8> = members.iter().flat_map(|d| *d.as_bytes()).collect();
                body.reborrow().init_archives().set_members(&bytes);
            }
            LinkArchives::Committed(commitment) => {
                let mut committed = body.reborrow().init_archives().init_committed();
                committed.set_root(&commitment.root);
                committed.set_size(commitment.size);
            }
        }
        write_scope(&self.scope, body.init_scope());
    }

    /// Parses a serialized body under the verifier's reader limits. Checks only that it is
    /// well-formed: this says nothing about whether anyone signed it (that is [`Verifier`]'s job).
    ///
    /// [`Verifier`]: super::Verifier
    pub fn parse(bytes: &[u8]) -> Result<Self, CapabilityError> {
        Self::decode(bytes, 0)
    }

    /// Parses a body under reader limits. `link` is only used to label errors.
    pub(crate) fn decode(bytes: &[u8], link: usize) -> Result<Self, CapabilityError> {
        with_reader(bytes, link, |root| read_body(root, link))
    }

    /// Reads only the issuer field, so the signature can be checked before anything else of the
    /// body is interpreted.
    pub(crate) fn peek_issuer(bytes: &[u8], link: usize) -> Result<PublicKey, CapabilityError> {
        with_reader(bytes, link, |root| {
            key(root.get_issuer(), "issuer", link).map_err(|e| e.into_capability(link))
        })
    }
}

/// Error raised while reading a body: a capnp error or a rule about the content.
enum ReadError {
    Capnp(capnp::Error),
    Invalid(CapabilityError),
}

impl ReadError {
    fn into_capability(self, link: usize) -> CapabilityError {
        match self {
            ReadError::Capnp(e) => CapabilityError::malformed(link, e),
            ReadError::Invalid(e) => e,
        }
    }
}

impl From<capnp::Error> for ReadError {
    fn from(e: capnp::Error) -> Self {
        ReadError::Capnp(e)
    }
}

impl From<capnp::NotInSchema> for ReadError {
    fn from(e: capnp::NotInSchema) -> Self {
        ReadError::Capnp(e.into())
    }
}

impl From<std::str::Utf8Error> for ReadError {
    fn from(e: std::str::Utf8Error) -> Self {
        ReadError::Capnp(e.into())
    }
}

fn invalid(link: usize, reason: impl std::fmt::Display) -> ReadError {
    ReadError::Invalid(CapabilityError::malformed(link, reason))
}

/// Opens `bytes` as one serialized message and runs `read` on its root.
///
/// The reader's limits come from the body's own size: no pointer trick can make it visit more
/// than twice the words that were sent.
fn with_reader<T>(
    bytes: &[u8],
    link: usize,
    read: impl FnOnce(capability_body::Reader<'_>) -> Result<T, CapabilityError>,
) -> Result<T, CapabilityError> {
    // capnp reads words in place and needs them 8-byte aligned. Bodies cut from a received
    // message always are; a body from elsewhere (a file, a Vec) is copied once if not.
    if bytes.as_ptr().align_offset(8) == 0 {
        return read_framed(bytes, link, read);
    }
    let mut words = capnp::Word::allocate_zeroed_vec(bytes.len().div_ceil(8));
    capnp::Word::words_to_bytes_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
    read_framed(
        &capnp::Word::words_to_bytes(&words)[..bytes.len()],
        link,
        read,
    )
}

fn read_framed<T>(
    bytes: &[u8],
    link: usize,
    read: impl FnOnce(capability_body::Reader<'_>) -> Result<T, CapabilityError>,
) -> Result<T, CapabilityError> {
    let options = *ReaderOptions::new()
        .traversal_limit_in_words(Some(bytes.len() / 4 + 64))
        .nesting_limit(NESTING_LIMIT);
    let mut rest = bytes;
    let message = serialize::read_message_from_flat_slice_no_alloc(&mut rest, options)
        .map_err(|e| CapabilityError::malformed(link, e))?;
    if !rest.is_empty() {
        return Err(CapabilityError::malformed(
            link,
            format!("{} bytes follow the body message", rest.len()),
        ));
    }
    let root = message
        .get_root::<capability_body::Reader<'_>>()
        .map_err(|e| CapabilityError::malformed(link, e))?;
    read(root)
}

fn read_body(
    root: capability_body::Reader<'_>,
    link: usize,
) -> Result<CapabilityBody, CapabilityError> {
    let version = root.get_version();
    if version != FORMAT_VERSION {
        return Err(CapabilityError::UnsupportedVersion { link, version });
    }
    read_fields(root, link).map_err(|e| e.into_capability(link))
}

fn read_fields(
    root: capability_body::Reader<'_>,
    link: usize,
) -> Result<CapabilityBody, ReadError> {
    let id = CapabilityId(
        root.get_id()?
            .try_into()
            .map_err(|_| invalid(link, "id must be 16 bytes"))?,
    );
    let issuer = key(root.get_issuer(), "issuer", link)?;
    let holder = key(root.get_holder(), "holder", link)?;
    let parent = match root.get_parent()? {
        [] => None,
        bytes => Some(
            bytes
                .try_into()
                .map_err(|_| invalid(link, "parent must be empty or a 64-byte signature"))?,
        ),
    };
    let window = Window::new(root.get_not_before(), root.get_not_after())
        .ok_or(ReadError::Invalid(CapabilityError::EmptyWindow { link }))?;
    let archives = read_archives(root.get_archives()?, link)?;
    let scope = read_scope(root.get_scope()?, link)?;
    Ok(CapabilityBody {
        id,
        issuer,
        holder,
        parent,
        archives,
        scope,
        window,
    })
}

fn key(field: capnp::Result<&[u8]>, name: &str, link: usize) -> Result<PublicKey, ReadError> {
    PublicKey::from_slice(field?)
        .ok_or_else(|| invalid(link, format!("{name} must be a 32-byte key")))
}

fn read_archives(set: archive_set::Reader<'_>, link: usize) -> Result<LinkArchives, ReadError> {
    Ok(match set.which()? {
        archive_set::AnyArchive(()) => LinkArchives::Any,
        archive_set::Members(bytes) => {
            let (digests, rest) = bytes?.as_chunks::<32>();
            if !rest.is_empty() {
                return Err(invalid(link, "archive digests are 32 bytes each"));
            }
            // Strictly ascending: canonical, duplicate-free, and searchable as it stands.
            if digests.windows(2).any(|pair| pair[0] >= pair[1]) {
                return Err(invalid(link, "archive digests must be sorted and unique"));
            }
            LinkArchives::Listed(
                digests
                    .iter()
                    .map(|d| ArchiveDigest::from_bytes(*d))
                    .collect(),
            )
        }
        archive_set::Committed(committed) => {
            let root = committed
                .get_root()?
                .try_into()
                .map_err(|_| invalid(link, "a committed archive set's root is 32 bytes"))?;
            let size = committed.get_size();
            if size == 0 {
                return Err(invalid(
                    link,
                    "a committed archive set has at least one member",
                ));
            }
            LinkArchives::Committed(SetCommitment { root, size })
        }
    })
}

fn read_scope(reader: scope::Reader<'_>, link: usize) -> Result<Scope, ReadError> {
    let collections = match reader.get_collections().which()? {
        scope::collections::AllCollections(()) => Collections::All,
        scope::collections::Only(list) => {
            let mut grants = BTreeMap::new();
            for grant in list?.iter() {
                let name = grant.get_name()?.to_str()?.to_owned();
                let parsed = read_grant(grant, link)?;
                if grants.insert(name.clone(), parsed).is_some() {
                    return Err(invalid(
                        link,
                        format!("collection {name:?} is granted twice"),
                    ));
                }
            }
            Collections::Only(grants)
        }
    };
    let mut operations = Vec::new();
    for op in reader.get_operations()?.iter() {
        operations.push(match op.which()? {
            operation::Describe(()) => Operation::Describe,
            operation::Query(()) => Operation::Query,
            operation::Command(grant) => {
                let grant = grant?;
                let digest = match grant.get_digest()? {
                    [] => None,
                    bytes => Some(CommandDigest::from_bytes(bytes.try_into().map_err(
                        |_| invalid(link, "a command digest is empty or 32 bytes"),
                    )?)),
                };
                Operation::Command {
                    name: grant.get_name()?.to_str()?.to_owned(),
                    holder_binds: grant.get_holder_binds() && digest.is_none(),
                    digest,
                }
            }
        });
    }
    Ok(Scope {
        collections,
        operations,
    })
}

fn read_grant(
    grant: collection_grant::Reader<'_>,
    link: usize,
) -> Result<CollectionGrant, ReadError> {
    let fields = match grant.get_fields().which()? {
        collection_grant::fields::AllFields(()) => FieldSet::All,
        collection_grant::fields::Only(list) => {
            let mut names = std::collections::BTreeSet::new();
            for name in list?.iter() {
                names.insert(name?.to_str()?.to_owned());
            }
            FieldSet::Only(names)
        }
    };
    let rows = match grant.get_rows()?.which()? {
        row_selector::AllRows(()) => RowSelector::All,
        row_selector::Keys(keys) => RowSelector::Keys(read_keys(keys?, link)?),
    };
    Ok(CollectionGrant { fields, rows })
}

fn read_keys(keys: key_selector::Reader<'_>, link: usize) -> Result<KeySelector, ReadError> {
    let mut values = Vec::new();
    for v in keys.get_values()?.iter() {
        values.push(read_key(v, link)?);
    }
    let mut ranges = Vec::new();
    for r in keys.get_ranges()?.iter() {
        let (low, high) = (
            read_key(r.get_low()?, link)?,
            read_key(r.get_high()?, link)?,
        );
        ranges.push(
            KeyRange::new(low, high).ok_or_else(|| {
                invalid(link, "a key range needs ends of one type with low < high")
            })?,
        );
    }
    Ok(KeySelector::new(
        keys.get_field()?.to_str()?,
        values,
        ranges,
    ))
}

fn read_key(v: value::Reader<'_>, link: usize) -> Result<RowKey, ReadError> {
    match v.which()? {
        value::Int(i) => Ok(RowKey::Int(i)),
        value::Text(t) => Ok(RowKey::Text(t?.to_str()?.to_owned())),
        _ => Err(invalid(link, "row keys are int or text values")),
    }
}

fn len<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).expect("lists in a capability are far below 2^32 items")
}

fn write_scope(scope: &Scope, mut builder: scope::Builder<'_>) {
    match &scope.collections {
        Collections::All => builder.reborrow().get_collections().set_all_collections(()),
        Collections::Only(grants) => {
            let mut list = builder
                .reborrow()
                .get_collections()
                .init_only(grants.len() as u32);
            for (i, (name, grant)) in grants.iter().enumerate() {
                let mut entry = list.reborrow().get(i as u32);
                entry.set_name(name);
                write_grant(grant, entry);
            }
        }
    }
    let mut ops = builder.init_operations(len(&scope.operations));
    for (i, op) in scope.operations.iter().enumerate() {
        let mut entry = ops.reborrow().get(i as u32);
        match op {
            Operation::Describe => entry.set_describe(()),
            Operation::Query => entry.set_query(()),
            Operation::Command {
                name,
                digest,
                holder_binds,
            } => {
                let mut command = entry.init_command();
                command.set_name(name);
                match digest {
                    Some(digest) => command.set_digest(digest.as_bytes()),
                    None => command.set_holder_binds(*holder_binds),
                }
            }
        }
    }
}

fn write_grant(grant: &CollectionGrant, mut builder: collection_grant::Builder<'_>) {
    match &grant.fields {
        FieldSet::All => builder.reborrow().get_fields().set_all_fields(()),
        FieldSet::Only(names) => {
            let mut list = builder
                .reborrow()
                .get_fields()
                .init_only(names.len() as u32);
            for (i, name) in names.iter().enumerate() {
                list.set(i as u32, name);
            }
        }
    }
    let mut rows = builder.init_rows();
    match &grant.rows {
        RowSelector::All => rows.set_all_rows(()),
        RowSelector::Keys(keys) => {
            let mut sel = rows.init_keys();
            sel.set_field(keys.field());
            let mut values = sel.reborrow().init_values(keys.value_count() as u32);
            for (i, key) in keys.values().enumerate() {
                write_key(&key, values.reborrow().get(i as u32));
            }
            let mut ranges = sel.init_ranges(len(keys.ranges()));
            for (i, range) in keys.ranges().iter().enumerate() {
                let mut entry = ranges.reborrow().get(i as u32);
                write_key(range.low(), entry.reborrow().init_low());
                write_key(range.high(), entry.init_high());
            }
        }
    }
}

fn write_key(key: &RowKey, mut builder: value::Builder<'_>) {
    match key {
        RowKey::Int(i) => builder.set_int(*i),
        RowKey::Text(t) => builder.set_text(t),
    }
}
