//! Safe wrappers over [`super::raw::Fwpm`]: an engine handle that closes on drop, a transaction
//! that aborts unless committed, owned object structures whose every pointer points into
//! buffers they own, and enumerations copied into plain Rust values before the engine's memory
//! is freed.

use super::raw::{self, codes, Fwpm, GUID, HANDLE};
use super::spec::{self, Condition, FilterSpec, LayerKey};
use crate::ids::{Guid, RuleKey};
use std::fmt;

/// A failed Fwpm call: what we did, to which object, and the code by name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct WfpError {
    /// The operation (`adding filter`, `beginning the transaction`, ...).
    pub operation: &'static str,
    /// The object it touched (`filter userwall dns_v4 {a844...}`), or empty.
    pub object: String,
    /// The result code.
    pub code: u32,
}

impl fmt::Display for WfpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = if self.object.is_empty() {
            String::new()
        } else {
            format!(" {}", self.object)
        };
        write!(
            f,
            "{}{object} failed: {} (0x{:08X})",
            self.operation,
            codes::name(self.code),
            self.code
        )?;
        match self.code {
            codes::ERROR_ACCESS_DENIED => {
                write!(f, "; run from an elevated (administrator) process")
            }
            codes::EPT_S_NOT_REGISTERED => {
                write!(f, "; start the Base Filtering Engine service (BFE)")
            }
            _ => Ok(()),
        }
    }
}

/// Turns a result code into a result, treating the listed codes as success. The one place that
/// decides which outcomes are harmless (already exists when ensuring, not found when deleting).
pub fn check(
    code: u32,
    operation: &'static str,
    object: impl Into<String>,
    harmless: &[u32],
) -> Result<u32, WfpError> {
    if code == codes::OK || harmless.contains(&code) {
        Ok(code)
    } else {
        Err(WfpError {
            operation,
            object: object.into(),
            code,
        })
    }
}

/// UTF-16, NUL-terminated, built without Windows-only std APIs.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// FWPM_TXN_READ_ONLY.
pub const FWPM_TXN_READ_ONLY: u32 = 1;

/// FWPM_SESSION_FLAG_DYNAMIC.
pub const FWPM_SESSION_FLAG_DYNAMIC: u32 = 1;

/// How long the objects userwall adds live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Until deleted, across reboots: what setup installs.
    Persistent,
    /// Until the session closes: for the live test.
    Dynamic,
}

impl Lifetime {
    fn object_flags(self) -> u32 {
        match self {
            Lifetime::Persistent => spec::OBJECT_FLAG_PERSISTENT,
            Lifetime::Dynamic => 0,
        }
    }
}

/// An open engine session; closed on drop.
pub struct Engine<'a> {
    api: &'a dyn Fwpm,
    handle: HANDLE,
}

impl<'a> Engine<'a> {
    /// Opens a non-dynamic session (objects outlive it) that waits up to [`TXN_WAIT_MS`] for
    /// the transaction lock.
    pub fn open(api: &'a dyn Fwpm) -> Result<Engine<'a>, WfpError> {
        Engine::open_with(api, Lifetime::Persistent)
    }

    /// Opens a session; a dynamic one deletes every object it added when it closes (the live
    /// Windows test uses it so a crash leaves nothing behind).
    pub fn open_with(api: &'a dyn Fwpm, lifetime: Lifetime) -> Result<Engine<'a>, WfpError> {
        let name = wide("userwall");
        let session = raw::FWPM_SESSION0 {
            sessionKey: GUID::from_u128(0),
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: name.as_ptr() as *mut u16,
                description: std::ptr::null_mut(),
            },
            flags: match lifetime {
                Lifetime::Persistent => 0,
                Lifetime::Dynamic => FWPM_SESSION_FLAG_DYNAMIC,
            },
            txnWaitTimeoutInMSec: TXN_WAIT_MS,
            processId: 0,
            sid: std::ptr::null_mut(),
            username: std::ptr::null_mut(),
            kernelMode: 0,
        };
        let mut handle: HANDLE = std::ptr::null_mut();
        // SAFETY: `session` and the name it points to live until the call returns; `handle` is
        // a valid place for the engine to write the new handle.
        let code = unsafe { api.engine_open(&session, &mut handle) };
        check(code, "opening the filter engine", "", &[])?;
        Ok(Engine { api, handle })
    }

    /// The API behind it.
    pub fn api(&self) -> &'a dyn Fwpm {
        self.api
    }

    /// The raw handle, for calls the wrappers do not cover.
    pub fn handle(&self) -> HANDLE {
        self.handle
    }

    /// Begins a read-write transaction.
    pub fn transaction(&self) -> Result<Transaction<'_, 'a>, WfpError> {
        self.begin(0)
    }

    /// Begins a read-only transaction: one consistent snapshot for several enumerations.
    pub fn read_transaction(&self) -> Result<Transaction<'_, 'a>, WfpError> {
        self.begin(FWPM_TXN_READ_ONLY)
    }

    fn begin(&self, flags: u32) -> Result<Transaction<'_, 'a>, WfpError> {
        // SAFETY: the handle is open for as long as `self` lives.
        let code = unsafe { self.api.transaction_begin(self.handle, flags) };
        check(code, "beginning the transaction", "", &[])?;
        Ok(Transaction {
            engine: self,
            done: false,
        })
    }
}

impl Drop for Engine<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from engine_open on the same API and is closed once.
        unsafe { self.api.engine_close(self.handle) };
    }
}

/// An open transaction; aborted on drop unless committed.
pub struct Transaction<'e, 'a> {
    engine: &'e Engine<'a>,
    done: bool,
}

impl Transaction<'_, '_> {
    /// Commits; nothing of the transaction is visible before this returns Ok.
    pub fn commit(mut self) -> Result<(), WfpError> {
        self.done = true;
        // SAFETY: the engine handle is open and has this transaction in progress.
        let code = unsafe { self.engine.api.transaction_commit(self.engine.handle) };
        check(code, "committing the transaction", "", &[]).map(drop)
    }
}

impl Drop for Transaction<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: the engine handle is open and has this transaction in progress.
            unsafe { self.engine.api.transaction_abort(self.engine.handle) };
        }
    }
}

/// A provider structure and the buffers it points into.
pub struct OwnedProvider {
    name: Vec<u16>,
    description: Vec<u16>,
    key: Guid,
    flags: u32,
}

impl OwnedProvider {
    /// Our persistent provider.
    pub fn ours() -> OwnedProvider {
        OwnedProvider::ours_with(Lifetime::Persistent)
    }

    /// Our provider with this lifetime.
    pub fn ours_with(lifetime: Lifetime) -> OwnedProvider {
        OwnedProvider {
            name: wide("userwall"),
            description: wide("Blocks sandbox accounts' network egress"),
            key: crate::ids::WFP_PROVIDER,
            flags: lifetime.object_flags(),
        }
    }

    /// The raw structure; valid while `self` is borrowed.
    pub fn raw(&self) -> raw::FWPM_PROVIDER0 {
        raw::FWPM_PROVIDER0 {
            providerKey: raw::to_guid(self.key),
            // The engine only reads these buffers; the C type is not const-qualified.
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: self.name.as_ptr() as *mut u16,
                description: self.description.as_ptr() as *mut u16,
            },
            flags: self.flags,
            providerData: raw::FWP_BYTE_BLOB {
                size: 0,
                data: std::ptr::null_mut(),
            },
            // No service name: BFE loads a provider's persistent objects at boot only when it
            // has none or its service starts automatically.
            serviceName: std::ptr::null_mut(),
        }
    }
}

/// A sublayer structure and the buffers it points into.
pub struct OwnedSublayer {
    name: Vec<u16>,
    description: Vec<u16>,
    key: Guid,
    provider: Box<GUID>,
    flags: u32,
    weight: u16,
}

impl OwnedSublayer {
    /// Our persistent sublayer.
    pub fn ours() -> OwnedSublayer {
        OwnedSublayer::ours_with(Lifetime::Persistent)
    }

    /// Our sublayer with this lifetime.
    pub fn ours_with(lifetime: Lifetime) -> OwnedSublayer {
        OwnedSublayer {
            name: wide("userwall"),
            description: wide("userwall's block filters for sandbox accounts"),
            key: crate::ids::WFP_SUBLAYER,
            provider: Box::new(raw::to_guid(crate::ids::WFP_PROVIDER)),
            flags: lifetime.object_flags(),
            weight: spec::SUBLAYER_WEIGHT,
        }
    }

    /// The raw structure; valid while `self` is borrowed.
    pub fn raw(&self) -> raw::FWPM_SUBLAYER0 {
        raw::FWPM_SUBLAYER0 {
            subLayerKey: raw::to_guid(self.key),
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: self.name.as_ptr() as *mut u16,
                description: self.description.as_ptr() as *mut u16,
            },
            flags: self.flags,
            providerKey: &*self.provider as *const GUID as *mut GUID,
            providerData: raw::FWP_BYTE_BLOB {
                size: 0,
                data: std::ptr::null_mut(),
            },
            weight: self.weight,
        }
    }
}

/// A filter structure and every buffer its pointers reach: names, the provider key, the
/// condition array and the security descriptor blob.
pub struct OwnedFilter {
    spec: FilterSpec,
    name: Vec<u16>,
    description: Vec<u16>,
    provider: Box<GUID>,
    conditions: Vec<raw::FWPM_FILTER_CONDITION0>,
    // Boxed so the addresses in `conditions` stay put while the vector grows.
    #[allow(clippy::vec_box)]
    blobs: Vec<Box<raw::FWP_BYTE_BLOB>>,
    blob_data: Vec<Vec<u8>>,
}

impl OwnedFilter {
    /// Builds the owned structure for a spec.
    pub fn new(spec: &FilterSpec) -> OwnedFilter {
        let mut blob_data: Vec<Vec<u8>> = Vec::new();
        let mut blobs: Vec<Box<raw::FWP_BYTE_BLOB>> = Vec::new();
        let mut conditions = Vec::new();
        for condition in &spec.conditions {
            let value = match condition {
                Condition::User(sd) => {
                    let data = sd.clone();
                    let blob = Box::new(raw::FWP_BYTE_BLOB {
                        size: data.len() as u32,
                        data: data.as_ptr() as *mut u8,
                    });
                    let value = raw::FWP_CONDITION_VALUE0_0 {
                        sd: &*blob as *const raw::FWP_BYTE_BLOB as *mut raw::FWP_BYTE_BLOB,
                    };
                    blob_data.push(data);
                    blobs.push(blob);
                    value
                }
                Condition::Protocol(p) => raw::FWP_CONDITION_VALUE0_0 { uint8: *p },
                Condition::RemotePort(p) => raw::FWP_CONDITION_VALUE0_0 { uint16: *p },
                Condition::NotLoopback => raw::FWP_CONDITION_VALUE0_0 {
                    uint32: spec::FLAG_IS_LOOPBACK,
                },
            };
            conditions.push(raw::FWPM_FILTER_CONDITION0 {
                fieldKey: raw::to_guid(condition.field().0),
                matchType: condition.match_type(),
                conditionValue: raw::FWP_CONDITION_VALUE0 {
                    r#type: condition.data_type(),
                    Anonymous: value,
                },
            });
        }
        OwnedFilter {
            spec: spec.clone(),
            name: wide(&spec.name),
            description: wide(&spec.description),
            provider: Box::new(raw::to_guid(crate::ids::WFP_PROVIDER)),
            conditions,
            blobs,
            blob_data,
        }
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    /// The raw structure; valid while `self` is borrowed.
    pub fn raw(&self) -> raw::FWPM_FILTER0 {
        debug_assert_eq!(self.blobs.len(), self.blob_data.len());
        raw::FWPM_FILTER0 {
            filterKey: raw::to_guid(self.spec.key.0),
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: self.name.as_ptr() as *mut u16,
                description: self.description.as_ptr() as *mut u16,
            },
            flags: self.spec.flags,
            providerKey: &*self.provider as *const GUID as *mut GUID,
            providerData: raw::FWP_BYTE_BLOB {
                size: 0,
                data: std::ptr::null_mut(),
            },
            layerKey: raw::to_guid(self.spec.layer.0),
            subLayerKey: raw::to_guid(crate::ids::WFP_SUBLAYER),
            weight: raw::FWP_VALUE0 {
                r#type: spec::data_type::UINT8,
                Anonymous: raw::FWP_VALUE0_0 {
                    uint8: self.spec.weight_range,
                },
            },
            numFilterConditions: self.conditions.len() as u32,
            filterCondition: self.conditions.as_ptr() as *mut raw::FWPM_FILTER_CONDITION0,
            action: raw::FWPM_ACTION0 {
                r#type: ACTION_BLOCK,
                Anonymous: raw::FWPM_ACTION0_0 {
                    filterType: GUID::from_u128(0),
                },
            },
            Anonymous: raw::FWPM_FILTER0_0 { rawContext: 0 },
            reserved: std::ptr::null_mut(),
            filterId: 0,
            effectiveWeight: raw::FWP_VALUE0 {
                r#type: 0,
                Anonymous: raw::FWP_VALUE0_0 { uint8: 0 },
            },
        }
    }
}

/// Which kind of object a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A provider.
    Provider,
    /// A sublayer.
    Sublayer,
    /// A filter.
    Filter,
}

/// FwpmProviderAdd0 with our owned structure.
pub fn provider_add(engine: &Engine<'_>, provider: &OwnedProvider) -> u32 {
    let raw = provider.raw();
    // SAFETY: `raw` points into `provider`, which is borrowed for the whole call.
    unsafe { engine.api.provider_add(engine.handle, &raw) }
}

/// FwpmSubLayerAdd0 with our owned structure.
pub fn sublayer_add(engine: &Engine<'_>, sublayer: &OwnedSublayer) -> u32 {
    let raw = sublayer.raw();
    // SAFETY: `raw` points into `sublayer`, which is borrowed for the whole call.
    unsafe { engine.api.sublayer_add(engine.handle, &raw) }
}

/// FwpmFilterAdd0 with our owned structure.
pub fn filter_add(engine: &Engine<'_>, filter: &OwnedFilter) -> u32 {
    let raw = filter.raw();
    let mut id = 0u64;
    // SAFETY: `raw` points into `filter`, which is borrowed for the whole call; `id` is
    // writable.
    unsafe { engine.api.filter_add(engine.handle, &raw, &mut id) }
}

/// Fwpm{Provider,SubLayer,Filter}DeleteByKey0.
pub fn delete_by_key(engine: &Engine<'_>, kind: ObjectKind, key: Guid) -> u32 {
    let key = raw::to_guid(key);
    // SAFETY: `key` lives on this frame for the whole call; the handle is open.
    unsafe {
        match kind {
            ObjectKind::Provider => engine.api.provider_delete_by_key(engine.handle, &key),
            ObjectKind::Sublayer => engine.api.sublayer_delete_by_key(engine.handle, &key),
            ObjectKind::Filter => engine.api.filter_delete_by_key(engine.handle, &key),
        }
    }
}

/// FWP_ACTION_BLOCK.
pub const ACTION_BLOCK: u32 = 0x1001;
/// FWP_ACTION_PERMIT.
pub const ACTION_PERMIT: u32 = 0x1002;

/// A filter as enumerated, copied out of engine memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledFilter {
    /// Its key.
    pub key: RuleKey,
    /// Display name.
    pub name: String,
    /// Flags.
    pub flags: u32,
    /// Provider, when set.
    pub provider: Option<Guid>,
    /// Layer.
    pub layer: LayerKey,
    /// Sublayer.
    pub sublayer: Guid,
    /// Action type.
    pub action: u32,
    /// Conditions we can read, in order; `None` for a condition of a shape we never write.
    pub conditions: Vec<Option<Condition>>,
}

/// A sublayer as enumerated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledSublayer {
    /// Its key.
    pub key: Guid,
    /// Flags.
    pub flags: u32,
    /// Provider, when set.
    pub provider: Option<Guid>,
    /// Weight.
    pub weight: u16,
}

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated UTF-16 string.
unsafe fn read_wide(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut len = 0;
    // SAFETY: the caller promises a terminated string, so every index up to the NUL is valid.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements from `p` were just read one by one.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Reads one condition the way we write them; `None` for anything else.
///
/// # Safety
/// `c` is a condition whose union member matches its type tag and whose pointers are valid.
unsafe fn read_condition(c: &raw::FWPM_FILTER_CONDITION0) -> Option<Condition> {
    let field = spec::FieldKey(raw::from_guid(&c.fieldKey));
    let value = &c.conditionValue;
    // SAFETY (each union read below): the type tag checked in the same arm says which member
    // is live, per FWP_CONDITION_VALUE0's contract.
    let condition = match (value.r#type, c.matchType) {
        (spec::data_type::SECURITY_DESCRIPTOR, spec::match_type::EQUAL)
            if field == spec::ALE_USER_ID =>
        {
            // SAFETY: see above; the blob pointer is valid per the caller's promise.
            let blob = unsafe { value.Anonymous.sd.as_ref()? };
            if blob.data.is_null() && blob.size != 0 {
                return None;
            }
            // SAFETY: `data` points to `size` bytes per FWP_BYTE_BLOB's contract.
            let bytes = if blob.size == 0 {
                Vec::new()
            } else {
                // SAFETY: `data` points to `size` bytes per FWP_BYTE_BLOB's contract.
                unsafe { std::slice::from_raw_parts(blob.data, blob.size as usize) }.to_vec()
            };
            Condition::User(bytes)
        }
        (spec::data_type::UINT8, spec::match_type::EQUAL) if field == spec::IP_PROTOCOL => {
            // SAFETY: see above.
            Condition::Protocol(unsafe { value.Anonymous.uint8 })
        }
        (spec::data_type::UINT16, spec::match_type::EQUAL) if field == spec::IP_REMOTE_PORT => {
            // SAFETY: see above.
            Condition::RemotePort(unsafe { value.Anonymous.uint16 })
        }
        (spec::data_type::UINT32, spec::match_type::FLAGS_NONE_SET) if field == spec::FLAGS => {
            // SAFETY: see above.
            if unsafe { value.Anonymous.uint32 } != spec::FLAG_IS_LOOPBACK {
                return None;
            }
            Condition::NotLoopback
        }
        _ => return None,
    };
    Some(condition)
}

fn enum_template(provider: &GUID) -> raw::FWPM_FILTER_ENUM_TEMPLATE0 {
    raw::FWPM_FILTER_ENUM_TEMPLATE0 {
        providerKey: provider as *const GUID as *mut GUID,
        layerKey: GUID::from_u128(0),
        enumType: 1, // FWP_FILTER_ENUM_OVERLAPPING: every filter, whatever its conditions
        // Disabled filters (FWPM_FILTER_FLAG_DISABLED) are listed only when asked for; verify
        // must see them to report them, and uninstall to delete them.
        flags: FILTER_ENUM_FLAG_INCLUDE_DISABLED,
        providerContextTemplate: std::ptr::null_mut(),
        numFilterConditions: 0,
        filterCondition: std::ptr::null_mut(),
        actionMask: u32::MAX,
        calloutKey: std::ptr::null_mut(),
    }
}

const ENUM_BATCH: u32 = 64;

/// FWP_FILTER_ENUM_FLAG_INCLUDE_DISABLED.
pub const FILTER_ENUM_FLAG_INCLUDE_DISABLED: u32 = 0x10;
/// FWPM_FILTER_FLAG_DISABLED (output only).
pub const FILTER_FLAG_DISABLED: u32 = 0x20;

/// How long a session waits for the engine's transaction lock before FWP_E_TIMEOUT: long
/// enough for any other installer, short enough that a stuck one cannot hang setup.
pub const TXN_WAIT_MS: u32 = 60_000;

/// Every filter whose provider is ours. The template asks for our provider; the result is
/// filtered again on our side, since whether the engine honours a provider with a zero layer
/// key is not documented.
pub fn our_filters(engine: &Engine<'_>) -> Result<Vec<InstalledFilter>, WfpError> {
    let provider = raw::to_guid(crate::ids::WFP_PROVIDER);
    let template = enum_template(&provider);
    let api = engine.api();
    let mut handle: HANDLE = std::ptr::null_mut();
    // SAFETY: the template and our provider key live across the call; `handle` is writable.
    let code = unsafe { api.filter_create_enum_handle(engine.handle(), &template, &mut handle) };
    check(code, "enumerating filters", "", &[])?;
    let mut out = Vec::new();
    let result = loop {
        let mut entries: *mut *mut raw::FWPM_FILTER0 = std::ptr::null_mut();
        let mut returned = 0u32;
        // SAFETY: the handles are open; `entries` and `returned` are writable.
        let code = unsafe {
            api.filter_enum(
                engine.handle(),
                handle,
                ENUM_BATCH,
                &mut entries,
                &mut returned,
            )
        };
        if let Err(e) = check(code, "enumerating filters", "", &[]) {
            break Err(e);
        }
        for i in 0..returned as usize {
            // SAFETY: the engine returned `returned` valid filter pointers at `entries`.
            let f = unsafe { &**entries.add(i) };
            // SAFETY: the provider key is null or points to a GUID in engine memory.
            let provider = unsafe { f.providerKey.as_ref() }.map(raw::from_guid);
            if provider != Some(crate::ids::WFP_PROVIDER) {
                continue;
            }
            let conditions = (0..f.numFilterConditions as usize)
                // SAFETY: the array holds `numFilterConditions` conditions whose members match
                // their tags, as the engine returned them.
                .map(|j| unsafe { read_condition(&*f.filterCondition.add(j)) })
                .collect();
            out.push(InstalledFilter {
                key: RuleKey(raw::from_guid(&f.filterKey)),
                // SAFETY: display names from the engine are terminated strings.
                name: unsafe { read_wide(f.displayData.name) },
                flags: f.flags,
                provider,
                layer: LayerKey(raw::from_guid(&f.layerKey)),
                sublayer: raw::from_guid(&f.subLayerKey),
                action: f.action.r#type,
                conditions,
            });
        }
        if !entries.is_null() {
            let mut p = entries as *mut core::ffi::c_void;
            // SAFETY: `entries` came from this enumeration and is freed once; nothing read from
            // it is used after this point (everything above was copied).
            unsafe { api.free_memory(&mut p) };
        }
        if returned < ENUM_BATCH {
            break Ok(());
        }
    };
    // SAFETY: the enumeration handle is open and destroyed once.
    let code = unsafe { api.filter_destroy_enum_handle(engine.handle(), handle) };
    result?;
    check(code, "closing the filter enumeration", "", &[])?;
    Ok(out)
}

/// Every sublayer whose provider is ours.
pub fn our_sublayers(engine: &Engine<'_>) -> Result<Vec<InstalledSublayer>, WfpError> {
    let provider = raw::to_guid(crate::ids::WFP_PROVIDER);
    let template = raw::FWPM_SUBLAYER_ENUM_TEMPLATE0 {
        providerKey: &provider as *const GUID as *mut GUID,
    };
    let api = engine.api();
    let mut handle: HANDLE = std::ptr::null_mut();
    // SAFETY: the template lives across the call; `handle` is writable.
    let code = unsafe { api.sublayer_create_enum_handle(engine.handle(), &template, &mut handle) };
    check(code, "enumerating sublayers", "", &[])?;
    let mut out = Vec::new();
    let result = loop {
        let mut entries: *mut *mut raw::FWPM_SUBLAYER0 = std::ptr::null_mut();
        let mut returned = 0u32;
        // SAFETY: the handles are open; `entries` and `returned` are writable.
        let code = unsafe {
            api.sublayer_enum(
                engine.handle(),
                handle,
                ENUM_BATCH,
                &mut entries,
                &mut returned,
            )
        };
        if let Err(e) = check(code, "enumerating sublayers", "", &[]) {
            break Err(e);
        }
        for i in 0..returned as usize {
            // SAFETY: the engine returned `returned` valid sublayer pointers at `entries`.
            let s = unsafe { &**entries.add(i) };
            // SAFETY: the provider key is null or points to a GUID in engine memory.
            let provider = unsafe { s.providerKey.as_ref() }.map(raw::from_guid);
            if provider == Some(crate::ids::WFP_PROVIDER) {
                out.push(InstalledSublayer {
                    key: raw::from_guid(&s.subLayerKey),
                    flags: s.flags,
                    provider,
                    weight: s.weight,
                });
            }
        }
        if !entries.is_null() {
            let mut p = entries as *mut core::ffi::c_void;
            // SAFETY: `entries` came from this enumeration and is freed once, after the copy.
            unsafe { api.free_memory(&mut p) };
        }
        if returned < ENUM_BATCH {
            break Ok(());
        }
    };
    // SAFETY: the enumeration handle is open and destroyed once.
    let code = unsafe { api.sublayer_destroy_enum_handle(engine.handle(), handle) };
    result?;
    check(code, "closing the sublayer enumeration", "", &[])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_strings_are_terminated_utf16() {
        assert_eq!(wide("ab"), vec![97, 98, 0]);
        assert_eq!(wide("é"), vec![0xe9, 0]);
    }

    #[test]
    fn errors_name_the_code_and_what_to_do() {
        let e = check(
            codes::ERROR_ACCESS_DENIED,
            "adding sublayer",
            "userwall",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("ERROR_ACCESS_DENIED") && e.to_string().contains("elevated"),
            "{e}"
        );
        assert_eq!(
            check(
                codes::FWP_E_ALREADY_EXISTS,
                "adding",
                "",
                &[codes::FWP_E_ALREADY_EXISTS]
            ),
            Ok(codes::FWP_E_ALREADY_EXISTS)
        );
    }
}
