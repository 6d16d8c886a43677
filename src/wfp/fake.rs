//! A fake of the WFP management API, for proving the layers above on Linux.
//!
//! It implements [`Fwpm`] and behaves as Microsoft documents the engine: it reads every
//! structure through its raw pointers and deep-copies it (a dangling or wrong pointer shows up,
//! under valgrind too), enforces object and transaction rules with the documented codes, hands
//! out enumeration memory that must be freed exactly once, and classifies flows with WFP's
//! arbitration. It can fail any chosen call, and be made unavailable or access-denied.
//!
//! Not modelled: dynamic sessions and their object lifetimes, boot-time filters, callouts,
//! provider contexts, object security descriptors, weights of the built-in default sublayer,
//! the transaction lock's timeout between concurrent sessions, and every layer and condition
//! field userwall does not use (they get FWP_E_LAYER_NOT_FOUND / FWP_E_CONDITION_NOT_FOUND).

use super::raw::{self, codes, Fwpm, GUID, HANDLE};
use super::sd;
use super::sid::Sid;
use super::spec::{self, data_type, match_type, FieldKey, LayerKey};
use crate::ids::Guid;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// FWP_E_NULL_POINTER.
pub const FWP_E_NULL_POINTER: u32 = 0x8032_001C;
/// FWP_E_INCOMPATIBLE_TXN.
pub const FWP_E_INCOMPATIBLE_TXN: u32 = 0x8032_0011;
/// FWP_E_INVALID_ACTION_TYPE.
pub const FWP_E_INVALID_ACTION_TYPE: u32 = 0x8032_0024;
/// FWP_E_INVALID_WEIGHT.
pub const FWP_E_INVALID_WEIGHT: u32 = 0x8032_0025;
/// ERROR_INVALID_HANDLE.
pub const ERROR_INVALID_HANDLE: u32 = 6;

const FILTER_FLAG_BOOTTIME: u32 = 0x2;
const SE_SELF_RELATIVE: u16 = 0x8000;

/// A condition value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// FWP_UINT8.
    U8(u8),
    /// FWP_UINT16.
    U16(u16),
    /// FWP_UINT32.
    U32(u32),
    /// FWP_SECURITY_DESCRIPTOR_TYPE, the descriptor's bytes.
    Sd(Vec<u8>),
}

/// A condition as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCondition {
    /// Field.
    pub field: Guid,
    /// FWP_MATCH_TYPE.
    pub match_type: i32,
    /// Value.
    pub value: Value,
}

/// A filter as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFilter {
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Flags.
    pub flags: u32,
    /// Provider.
    pub provider: Option<Guid>,
    /// Layer.
    pub layer: Guid,
    /// Sublayer.
    pub sublayer: Guid,
    /// Weight, as the 64-bit effective weight.
    pub weight: u64,
    /// Conditions.
    pub conditions: Vec<StoredCondition>,
    /// Action type.
    pub action: u32,
    /// Run-time id.
    pub id: u64,
}

/// A sublayer as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSublayer {
    /// Display name.
    pub name: String,
    /// Flags.
    pub flags: u32,
    /// Provider.
    pub provider: Option<Guid>,
    /// Weight.
    pub weight: u16,
}

/// A provider as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProvider {
    /// Display name.
    pub name: String,
    /// Flags.
    pub flags: u32,
}

/// The engine's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Providers by key.
    pub providers: BTreeMap<Guid, StoredProvider>,
    /// Sublayers by key.
    pub sublayers: BTreeMap<Guid, StoredSublayer>,
    /// Filters by key.
    pub filters: BTreeMap<Guid, StoredFilter>,
    next_id: u64,
}

impl State {
    /// The state without run-time ids, which change whenever a filter is re-added: what two
    /// equivalent installs have in common.
    pub fn shape(&self) -> State {
        let mut s = self.clone();
        s.next_id = 0;
        for f in s.filters.values_mut() {
            f.id = 0;
        }
        s
    }
}

#[derive(Default)]
struct Session {
    txn: Option<(State, bool)>,
}

enum Enumeration {
    Filters {
        session: usize,
        items: Vec<StoredFilterWithKey>,
        at: usize,
    },
    Sublayers {
        session: usize,
        items: Vec<(Guid, StoredSublayer)>,
        at: usize,
    },
}

type StoredFilterWithKey = (Guid, StoredFilter);

/// Memory handed to a caller: the array and everything its entries point to.
// Boxed entries: the array handed out points at each structure, so none may move.
#[allow(dead_code, clippy::vec_box)] // held only to be dropped by free_memory
enum Allocation {
    Filters {
        array: Vec<*mut raw::FWPM_FILTER0>,
        filters: Vec<Box<FilterMemory>>,
    },
    Sublayers {
        array: Vec<*mut raw::FWPM_SUBLAYER0>,
        sublayers: Vec<Box<SublayerMemory>>,
    },
}

// SAFETY: the raw pointers inside point only into the boxes held alongside them, which move
// with the allocation; nothing else aliases them across threads.
unsafe impl Send for Allocation {}

// Boxed blobs: the conditions point at them while the vector grows.
#[allow(dead_code, clippy::vec_box)] // the buffers are read through `raw`'s pointers
struct FilterMemory {
    raw: raw::FWPM_FILTER0,
    name: Vec<u16>,
    description: Vec<u16>,
    provider: Box<GUID>,
    conditions: Vec<raw::FWPM_FILTER_CONDITION0>,
    blobs: Vec<Box<raw::FWP_BYTE_BLOB>>,
    blob_data: Vec<Vec<u8>>,
}

#[allow(dead_code)] // the buffers are read through `raw`'s pointers
struct SublayerMemory {
    raw: raw::FWPM_SUBLAYER0,
    name: Vec<u16>,
    provider: Box<GUID>,
}

/// A flow to classify.
#[derive(Clone, Debug)]
pub struct Flow {
    /// The SIDs in the flow's token (user and enabled groups).
    pub sids: Vec<Sid>,
    /// The layer it is classified at.
    pub layer: LayerKey,
    /// IP protocol.
    pub protocol: u8,
    /// Remote port (0 for protocols without one).
    pub remote_port: u16,
    /// Whether it stays on this host.
    pub loopback: bool,
}

/// The result of classifying a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Permit,
    /// Blocked.
    Block,
}

#[derive(Default)]
struct Inner {
    state: State,
    sessions: BTreeMap<usize, Session>,
    enums: BTreeMap<usize, Enumeration>,
    allocations: BTreeMap<usize, Allocation>,
    next_handle: usize,
    calls: Vec<&'static str>,
    fail_at: Option<(usize, u32)>,
    open_error: Option<u32>,
    deny_changes: bool,
    bad_frees: usize,
}

/// The fake engine.
#[derive(Default)]
pub struct FakeEngine {
    inner: Mutex<Inner>,
}

fn known_layer(layer: Guid) -> bool {
    [
        spec::ALE_AUTH_CONNECT_V4,
        spec::ALE_AUTH_CONNECT_V6,
        spec::ALE_RESOURCE_ASSIGNMENT_V4,
        spec::ALE_RESOURCE_ASSIGNMENT_V6,
        spec::ALE_AUTH_RECV_ACCEPT_V4,
        spec::ALE_AUTH_RECV_ACCEPT_V6,
    ]
    .iter()
    .any(|l| l.0 == layer)
}

/// The data type a field holds at run time, and the types a condition may give it when added.
fn accepted_types(field: FieldKey) -> &'static [i32] {
    match field {
        f if f == spec::ALE_USER_ID => &[data_type::SECURITY_DESCRIPTOR],
        f if f == spec::IP_PROTOCOL => &[data_type::UINT8],
        f if f == spec::IP_REMOTE_PORT => &[data_type::UINT16],
        f if f == spec::FLAGS => &[data_type::UINT32],
        _ => &[],
    }
}

fn match_allowed(match_type: i32, data: i32) -> bool {
    let unsigned = matches!(
        data,
        data_type::UINT8 | data_type::UINT16 | data_type::UINT32
    );
    match match_type {
        match_type::EQUAL => true,
        // GREATER, LESS, GREATER_OR_EQUAL, LESS_OR_EQUAL, RANGE, NOT_EQUAL: sortable types.
        1..=5 | 10 => unsigned,
        // FLAGS_ALL_SET, FLAGS_ANY_SET, FLAGS_NONE_SET: unsigned integers only.
        6..=8 => unsigned,
        _ => false,
    }
}

/// Reads a terminated UTF-16 string, `None` for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated UTF-16 string.
unsafe fn wide_at(p: *const u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut len = 0;
    // SAFETY: the caller promises termination, so each index up to the NUL is in bounds.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` elements were just read one by one.
    Some(String::from_utf16_lossy(unsafe {
        std::slice::from_raw_parts(p, len)
    }))
}

/// Deep-copies a condition.
///
/// # Safety
/// `c` is valid and the union member named by its type tag, with any pointer in it, is valid.
unsafe fn read_condition(c: &raw::FWPM_FILTER_CONDITION0) -> Result<StoredCondition, u32> {
    let value = &c.conditionValue;
    // SAFETY (for the three reads below): the type tag says which member is live.
    let stored = match value.r#type {
        data_type::UINT8 => {
            // SAFETY: see above.
            Value::U8(unsafe { value.Anonymous.uint8 })
        }
        data_type::UINT16 => {
            // SAFETY: see above.
            Value::U16(unsafe { value.Anonymous.uint16 })
        }
        data_type::UINT32 => {
            // SAFETY: see above.
            Value::U32(unsafe { value.Anonymous.uint32 })
        }
        data_type::SECURITY_DESCRIPTOR => {
            // SAFETY: the tag says `sd` is live; it is null or points to a blob.
            let blob = unsafe { value.Anonymous.sd.as_ref() }.ok_or(FWP_E_NULL_POINTER)?;
            if blob.data.is_null() {
                return Err(FWP_E_NULL_POINTER);
            }
            // SAFETY: a blob's `data` points to `size` bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts(blob.data, blob.size as usize) }.to_vec();
            Value::Sd(bytes)
        }
        _ => return Err(codes::FWP_E_TYPE_MISMATCH),
    };
    Ok(StoredCondition {
        field: raw::from_guid(&c.fieldKey),
        match_type: c.matchType,
        value: stored,
    })
}

fn filter_memory(key: Guid, f: &StoredFilter) -> Box<FilterMemory> {
    let mut blob_data: Vec<Vec<u8>> = Vec::new();
    let mut blobs: Vec<Box<raw::FWP_BYTE_BLOB>> = Vec::new();
    let mut conditions = Vec::new();
    for c in &f.conditions {
        let (ty, value) = match &c.value {
            Value::U8(v) => (data_type::UINT8, raw::FWP_CONDITION_VALUE0_0 { uint8: *v }),
            Value::U16(v) => (
                data_type::UINT16,
                raw::FWP_CONDITION_VALUE0_0 { uint16: *v },
            ),
            Value::U32(v) => (
                data_type::UINT32,
                raw::FWP_CONDITION_VALUE0_0 { uint32: *v },
            ),
            Value::Sd(bytes) => {
                let data = bytes.clone();
                let blob = Box::new(raw::FWP_BYTE_BLOB {
                    size: data.len() as u32,
                    data: data.as_ptr() as *mut u8,
                });
                let v = raw::FWP_CONDITION_VALUE0_0 {
                    sd: &*blob as *const raw::FWP_BYTE_BLOB as *mut raw::FWP_BYTE_BLOB,
                };
                blob_data.push(data);
                blobs.push(blob);
                (data_type::SECURITY_DESCRIPTOR, v)
            }
        };
        conditions.push(raw::FWPM_FILTER_CONDITION0 {
            fieldKey: raw::to_guid(c.field),
            matchType: c.match_type,
            conditionValue: raw::FWP_CONDITION_VALUE0 {
                r#type: ty,
                Anonymous: value,
            },
        });
    }
    let name = super::safe::wide(&f.name);
    let description = super::safe::wide(&f.description);
    let provider = Box::new(raw::to_guid(f.provider.unwrap_or(Guid(0))));
    let mut memory = Box::new(FilterMemory {
        raw: raw::FWPM_FILTER0 {
            filterKey: raw::to_guid(key),
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: std::ptr::null_mut(),
                description: std::ptr::null_mut(),
            },
            flags: f.flags,
            providerKey: std::ptr::null_mut(),
            providerData: raw::FWP_BYTE_BLOB {
                size: 0,
                data: std::ptr::null_mut(),
            },
            layerKey: raw::to_guid(f.layer),
            subLayerKey: raw::to_guid(f.sublayer),
            weight: raw::FWP_VALUE0 {
                r#type: data_type::UINT8,
                Anonymous: raw::FWP_VALUE0_0 {
                    uint8: (f.weight >> 60) as u8,
                },
            },
            numFilterConditions: conditions.len() as u32,
            filterCondition: std::ptr::null_mut(),
            action: raw::FWPM_ACTION0 {
                r#type: f.action,
                Anonymous: raw::FWPM_ACTION0_0 {
                    filterType: GUID::from_u128(0),
                },
            },
            Anonymous: raw::FWPM_FILTER0_0 { rawContext: 0 },
            reserved: std::ptr::null_mut(),
            filterId: f.id,
            effectiveWeight: raw::FWP_VALUE0 {
                r#type: 0,
                Anonymous: raw::FWP_VALUE0_0 { uint8: 0 },
            },
        },
        name,
        description,
        provider,
        conditions,
        blobs,
        blob_data,
    });
    // Pointers are taken once the buffers are in their final (heap) places.
    memory.raw.displayData.name = memory.name.as_mut_ptr();
    memory.raw.displayData.description = memory.description.as_mut_ptr();
    memory.raw.providerKey = if f.provider.is_some() {
        &mut *memory.provider
    } else {
        std::ptr::null_mut()
    };
    memory.raw.filterCondition = memory.conditions.as_mut_ptr();
    memory
}

fn sublayer_memory(key: Guid, s: &StoredSublayer) -> Box<SublayerMemory> {
    let mut memory = Box::new(SublayerMemory {
        raw: raw::FWPM_SUBLAYER0 {
            subLayerKey: raw::to_guid(key),
            displayData: raw::FWPM_DISPLAY_DATA0 {
                name: std::ptr::null_mut(),
                description: std::ptr::null_mut(),
            },
            flags: s.flags,
            providerKey: std::ptr::null_mut(),
            providerData: raw::FWP_BYTE_BLOB {
                size: 0,
                data: std::ptr::null_mut(),
            },
            weight: s.weight,
        },
        name: super::safe::wide(&s.name),
        provider: Box::new(raw::to_guid(s.provider.unwrap_or(Guid(0)))),
    });
    memory.raw.displayData.name = memory.name.as_mut_ptr();
    memory.raw.providerKey = if s.provider.is_some() {
        &mut *memory.provider
    } else {
        std::ptr::null_mut()
    };
    memory
}

impl FakeEngine {
    /// An empty, running engine.
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed objects (plus any of an open transaction).
    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// Changes the stored objects directly, as another tool or a tampering administrator would.
    pub fn edit_state(&self, edit: impl FnOnce(&mut State)) {
        edit(&mut self.lock().state);
    }

    /// Every call made so far, by method name.
    pub fn calls(&self) -> Vec<&'static str> {
        self.lock().calls.clone()
    }

    /// Makes the `index`-th call from now (0 = the next one) return `code` without effect.
    pub fn fail_call(&self, index: usize, code: u32) {
        let mut inner = self.lock();
        let at = inner.calls.len() + index;
        inner.fail_at = Some((at, code));
    }

    /// Makes engine_open fail with `code` (EPT_S_NOT_REGISTERED when BFE is stopped).
    pub fn set_open_error(&self, code: Option<u32>) {
        self.lock().open_error = code;
    }

    /// Makes every change fail with ERROR_ACCESS_DENIED, as for a caller that is not elevated.
    pub fn set_access_denied(&self, denied: bool) {
        self.lock().deny_changes = denied;
    }

    /// Handles, enumerations and allocations still open, and frees of unknown pointers: all
    /// zero once callers have cleaned up.
    pub fn leaks(&self) -> (usize, usize, usize, usize) {
        let inner = self.lock();
        (
            inner.sessions.len(),
            inner.enums.len(),
            inner.allocations.len(),
            inner.bad_frees,
        )
    }

    /// Adds a foreign sublayer and filter straight into the state, as another product would
    /// have, for arbitration tests: a permit for everyone at `layer`, hard when `hard`.
    pub fn add_foreign_permit(
        &self,
        sublayer: Guid,
        weight: u16,
        filter: Guid,
        layer: LayerKey,
        hard: bool,
    ) {
        let mut inner = self.lock();
        inner.state.sublayers.insert(
            sublayer,
            StoredSublayer {
                name: "foreign".into(),
                flags: 1,
                provider: None,
                weight,
            },
        );
        let id = inner.state.next_id + 1;
        inner.state.next_id = id;
        inner.state.filters.insert(
            filter,
            StoredFilter {
                name: "foreign permit".into(),
                description: String::new(),
                flags: if hard {
                    spec::FILTER_FLAG_CLEAR_ACTION_RIGHT
                } else {
                    0
                },
                provider: None,
                layer: layer.0,
                sublayer,
                weight: u64::MAX,
                conditions: Vec::new(),
                action: super::safe::ACTION_PERMIT,
                id,
            },
        );
    }

    /// Classifies a flow against the committed filters with WFP's arbitration: every sublayer is
    /// evaluated, heaviest first; inside one, the heaviest matching filter decides; a block is
    /// final unless a hard permit was decided in a heavier sublayer.
    pub fn classify(&self, flow: &Flow) -> Decision {
        let inner = self.lock();
        let state = &inner.state;
        let mut sublayers: Vec<(&Guid, &StoredSublayer)> = state.sublayers.iter().collect();
        sublayers.sort_by_key(|(_, s)| std::cmp::Reverse(s.weight));
        for (key, _) in sublayers {
            let mut candidates: Vec<&StoredFilter> = state
                .filters
                .values()
                .filter(|f| {
                    f.sublayer == *key
                        && f.layer == flow.layer.0
                        && f.conditions.iter().all(|c| condition_matches(c, flow))
                })
                .collect();
            candidates.sort_by_key(|f| std::cmp::Reverse(f.weight));
            match candidates.first() {
                Some(f) if f.action == super::safe::ACTION_BLOCK => return Decision::Block,
                Some(f)
                    if f.action == super::safe::ACTION_PERMIT
                        && f.flags & spec::FILTER_FLAG_CLEAR_ACTION_RIGHT != 0 =>
                {
                    return Decision::Permit
                }
                _ => {}
            }
        }
        Decision::Permit
    }

    fn begin_call(&self, name: &'static str) -> Result<std::sync::MutexGuard<'_, Inner>, u32> {
        let mut inner = self.lock();
        let index = inner.calls.len();
        inner.calls.push(name);
        if let Some((at, code)) = inner.fail_at {
            if at == index {
                inner.fail_at = None;
                return Err(code);
            }
        }
        Ok(inner)
    }
}

fn condition_matches(c: &StoredCondition, flow: &Flow) -> bool {
    let field = FieldKey(c.field);
    match (&c.value, c.match_type) {
        (Value::Sd(bytes), match_type::EQUAL) if field == spec::ALE_USER_ID => {
            sd::granted_accounts(bytes)
                .is_ok_and(|granted| granted.iter().any(|g| flow.sids.contains(g)))
        }
        (Value::U8(p), match_type::EQUAL) if field == spec::IP_PROTOCOL => flow.protocol == *p,
        (Value::U16(p), match_type::EQUAL) if field == spec::IP_REMOTE_PORT => {
            flow.remote_port == *p
        }
        (Value::U32(bits), match_type::FLAGS_NONE_SET) if field == spec::FLAGS => {
            let flags = if flow.loopback {
                spec::FLAG_IS_LOOPBACK
            } else {
                0
            };
            flags & bits == 0
        }
        (Value::U32(bits), 6) if field == spec::FLAGS => {
            let flags = if flow.loopback {
                spec::FLAG_IS_LOOPBACK
            } else {
                0
            };
            flags & bits == *bits
        }
        _ => false,
    }
}

impl Inner {
    fn session(&mut self, engine: HANDLE) -> Result<&mut Session, u32> {
        self.sessions
            .get_mut(&(engine as usize))
            .ok_or(ERROR_INVALID_HANDLE)
    }

    /// Checks a change is allowed in this session; a read-only transaction refuses it.
    fn change(&mut self, engine: HANDLE) -> Result<(), u32> {
        let deny = self.deny_changes;
        let session = self.session(engine)?;
        if matches!(session.txn, Some((_, true))) {
            return Err(FWP_E_INCOMPATIBLE_TXN);
        }
        if deny {
            return Err(codes::ERROR_ACCESS_DENIED);
        }
        Ok(())
    }

    fn new_handle(&mut self) -> usize {
        self.next_handle += 1;
        // Never zero, and not a plausible address either.
        0x1000 + self.next_handle * 8
    }
}

fn code(result: Result<(), u32>) -> u32 {
    result.err().unwrap_or(codes::OK)
}

impl Fwpm for FakeEngine {
    unsafe fn engine_open(&self, session: *const raw::FWPM_SESSION0, handle: *mut HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("engine_open")?;
            if let Some(e) = inner.open_error {
                return Err(e);
            }
            if handle.is_null() {
                return Err(FWP_E_NULL_POINTER);
            }
            // SAFETY: a non-null session points to a valid FWPM_SESSION0 per the contract.
            if let Some(s) = unsafe { session.as_ref() } {
                // SAFETY: its display name is null or terminated.
                let _ = unsafe { wide_at(s.displayData.name) };
            }
            let h = inner.new_handle();
            inner.sessions.insert(h, Session::default());
            // SAFETY: `handle` is non-null and writable per the contract.
            unsafe { *handle = h as HANDLE };
            Ok(())
        })())
    }

    unsafe fn engine_close(&self, engine: HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("engine_close")?;
            let session = inner
                .sessions
                .remove(&(engine as usize))
                .ok_or(ERROR_INVALID_HANDLE)?;
            // Closing a session aborts its open transaction.
            if let Some((snapshot, _)) = session.txn {
                inner.state = snapshot;
            }
            inner.enums.retain(|_, e| match e {
                Enumeration::Filters { session, .. } | Enumeration::Sublayers { session, .. } => {
                    *session != engine as usize
                }
            });
            Ok(())
        })())
    }

    unsafe fn transaction_begin(&self, engine: HANDLE, flags: u32) -> u32 {
        code((|| {
            let mut inner = self.begin_call("transaction_begin")?;
            let snapshot = inner.state.clone();
            let session = inner.session(engine)?;
            if session.txn.is_some() {
                return Err(codes::FWP_E_TXN_IN_PROGRESS);
            }
            session.txn = Some((snapshot, flags & 1 != 0));
            Ok(())
        })())
    }

    unsafe fn transaction_commit(&self, engine: HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("transaction_commit")?;
            let deny = inner.deny_changes;
            let session = inner.session(engine)?;
            let Some((_, read_only)) = &session.txn else {
                return Err(codes::FWP_E_NO_TXN_IN_PROGRESS);
            };
            if deny && !read_only {
                return Err(codes::ERROR_ACCESS_DENIED);
            }
            session.txn = None;
            Ok(())
        })())
    }

    unsafe fn transaction_abort(&self, engine: HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("transaction_abort")?;
            let session = inner.session(engine)?;
            let (snapshot, _) = session.txn.take().ok_or(codes::FWP_E_NO_TXN_IN_PROGRESS)?;
            inner.state = snapshot;
            Ok(())
        })())
    }

    unsafe fn provider_add(&self, engine: HANDLE, provider: *const raw::FWPM_PROVIDER0) -> u32 {
        code((|| {
            let mut inner = self.begin_call("provider_add")?;
            inner.change(engine)?;
            // SAFETY: a non-null provider points to a valid structure per the contract.
            let p = unsafe { provider.as_ref() }.ok_or(FWP_E_NULL_POINTER)?;
            // SAFETY: the display name is null or terminated.
            let name =
                unsafe { wide_at(p.displayData.name) }.ok_or(codes::FWP_E_NULL_DISPLAY_NAME)?;
            // SAFETY: the description is null or terminated.
            let _ = unsafe { wide_at(p.displayData.description) };
            // SAFETY: the service name is null or terminated.
            let _ = unsafe { wide_at(p.serviceName) };
            let key = raw::from_guid(&p.providerKey);
            if inner.state.providers.contains_key(&key) {
                return Err(codes::FWP_E_ALREADY_EXISTS);
            }
            inner.state.providers.insert(
                key,
                StoredProvider {
                    name,
                    flags: p.flags,
                },
            );
            Ok(())
        })())
    }

    unsafe fn provider_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
        code((|| {
            let mut inner = self.begin_call("provider_delete_by_key")?;
            inner.change(engine)?;
            // SAFETY: a non-null key points to a GUID per the contract.
            let key = raw::from_guid(unsafe { key.as_ref() }.ok_or(FWP_E_NULL_POINTER)?);
            if !inner.state.providers.contains_key(&key) {
                return Err(codes::FWP_E_PROVIDER_NOT_FOUND);
            }
            let used = inner
                .state
                .sublayers
                .values()
                .any(|s| s.provider == Some(key))
                || inner
                    .state
                    .filters
                    .values()
                    .any(|f| f.provider == Some(key));
            if used {
                return Err(codes::FWP_E_IN_USE);
            }
            inner.state.providers.remove(&key);
            Ok(())
        })())
    }

    unsafe fn sublayer_add(&self, engine: HANDLE, sublayer: *const raw::FWPM_SUBLAYER0) -> u32 {
        code((|| {
            let mut inner = self.begin_call("sublayer_add")?;
            inner.change(engine)?;
            // SAFETY: a non-null sublayer points to a valid structure per the contract.
            let s = unsafe { sublayer.as_ref() }.ok_or(FWP_E_NULL_POINTER)?;
            // SAFETY: the display name is null or terminated.
            let name =
                unsafe { wide_at(s.displayData.name) }.ok_or(codes::FWP_E_NULL_DISPLAY_NAME)?;
            // SAFETY: the description is null or terminated.
            let _ = unsafe { wide_at(s.displayData.description) };
            let key = raw::from_guid(&s.subLayerKey);
            if inner.state.sublayers.contains_key(&key) {
                return Err(codes::FWP_E_ALREADY_EXISTS);
            }
            // SAFETY: the provider key is null or points to a GUID.
            let provider = unsafe { s.providerKey.as_ref() }.map(raw::from_guid);
            if let Some(p) = provider {
                let stored = inner
                    .state
                    .providers
                    .get(&p)
                    .ok_or(codes::FWP_E_PROVIDER_NOT_FOUND)?;
                if s.flags & 1 != 0 && stored.flags & 1 == 0 {
                    return Err(codes::FWP_E_LIFETIME_MISMATCH);
                }
            }
            inner.state.sublayers.insert(
                key,
                StoredSublayer {
                    name,
                    flags: s.flags,
                    provider,
                    weight: s.weight,
                },
            );
            Ok(())
        })())
    }

    unsafe fn sublayer_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
        code((|| {
            let mut inner = self.begin_call("sublayer_delete_by_key")?;
            inner.change(engine)?;
            // SAFETY: a non-null key points to a GUID per the contract.
            let key = raw::from_guid(unsafe { key.as_ref() }.ok_or(FWP_E_NULL_POINTER)?);
            if !inner.state.sublayers.contains_key(&key) {
                return Err(codes::FWP_E_SUBLAYER_NOT_FOUND);
            }
            if inner.state.filters.values().any(|f| f.sublayer == key) {
                return Err(codes::FWP_E_IN_USE);
            }
            inner.state.sublayers.remove(&key);
            Ok(())
        })())
    }

    unsafe fn sublayer_create_enum_handle(
        &self,
        engine: HANDLE,
        template: *const raw::FWPM_SUBLAYER_ENUM_TEMPLATE0,
        handle: *mut HANDLE,
    ) -> u32 {
        code((|| {
            let mut inner = self.begin_call("sublayer_create_enum_handle")?;
            inner.session(engine)?;
            // SAFETY: a non-null template points to a valid structure, its provider key to a GUID.
            let provider = unsafe { template.as_ref().and_then(|t| t.providerKey.as_ref()) }
                .map(raw::from_guid);
            let items = inner
                .state
                .sublayers
                .iter()
                .filter(|(_, s)| provider.is_none() || s.provider == provider)
                .map(|(k, s)| (*k, s.clone()))
                .collect();
            let h = inner.new_handle();
            inner.enums.insert(
                h,
                Enumeration::Sublayers {
                    session: engine as usize,
                    items,
                    at: 0,
                },
            );
            // SAFETY: `handle` is writable per the contract (null is refused below).
            unsafe { handle.as_mut() }
                .map(|out| *out = h as HANDLE)
                .ok_or(FWP_E_NULL_POINTER)
        })())
    }

    unsafe fn sublayer_enum(
        &self,
        engine: HANDLE,
        handle: HANDLE,
        requested: u32,
        entries: *mut *mut *mut raw::FWPM_SUBLAYER0,
        returned: *mut u32,
    ) -> u32 {
        code((|| {
            let mut inner = self.begin_call("sublayer_enum")?;
            inner.session(engine)?;
            let Some(Enumeration::Sublayers { items, at, .. }) =
                inner.enums.get_mut(&(handle as usize))
            else {
                return Err(ERROR_INVALID_HANDLE);
            };
            let end = (*at + requested as usize).min(items.len());
            let batch: Vec<(Guid, StoredSublayer)> = items[*at..end].to_vec();
            *at = end;
            let mut sublayers: Vec<Box<SublayerMemory>> =
                batch.iter().map(|(k, s)| sublayer_memory(*k, s)).collect();
            let mut array: Vec<*mut raw::FWPM_SUBLAYER0> =
                sublayers.iter_mut().map(|m| &mut m.raw as *mut _).collect();
            let ptr = if array.is_empty() {
                std::ptr::null_mut()
            } else {
                array.as_mut_ptr()
            };
            if !ptr.is_null() {
                inner
                    .allocations
                    .insert(ptr as usize, Allocation::Sublayers { array, sublayers });
            }
            // SAFETY: `entries` and `returned` are writable per the contract.
            unsafe {
                *entries = ptr;
                *returned = batch.len() as u32;
            }
            Ok(())
        })())
    }

    unsafe fn sublayer_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("sublayer_destroy_enum_handle")?;
            inner.session(engine)?;
            match inner.enums.remove(&(handle as usize)) {
                Some(Enumeration::Sublayers { .. }) => Ok(()),
                _ => Err(ERROR_INVALID_HANDLE),
            }
        })())
    }

    unsafe fn filter_add(
        &self,
        engine: HANDLE,
        filter: *const raw::FWPM_FILTER0,
        id: *mut u64,
    ) -> u32 {
        code((|| {
            let mut inner = self.begin_call("filter_add")?;
            inner.change(engine)?;
            // SAFETY: a non-null filter points to a valid structure per the contract.
            let f = unsafe { filter.as_ref() }.ok_or(FWP_E_NULL_POINTER)?;
            // SAFETY: the display name is null or terminated.
            let name =
                unsafe { wide_at(f.displayData.name) }.ok_or(codes::FWP_E_NULL_DISPLAY_NAME)?;
            // SAFETY: the description is null or terminated.
            let description = unsafe { wide_at(f.displayData.description) }.unwrap_or_default();
            if f.flags & spec::FILTER_FLAG_PERSISTENT != 0 && f.flags & FILTER_FLAG_BOOTTIME != 0 {
                return Err(codes::FWP_E_INVALID_FLAGS);
            }
            let mut key = raw::from_guid(&f.filterKey);
            if inner.state.filters.contains_key(&key) {
                return Err(codes::FWP_E_ALREADY_EXISTS);
            }
            let layer = raw::from_guid(&f.layerKey);
            if !known_layer(layer) {
                return Err(codes::FWP_E_LAYER_NOT_FOUND);
            }
            let persistent = f.flags & spec::FILTER_FLAG_PERSISTENT != 0;
            let sublayer = raw::from_guid(&f.subLayerKey);
            let stored_sublayer = inner
                .state
                .sublayers
                .get(&sublayer)
                .ok_or(codes::FWP_E_SUBLAYER_NOT_FOUND)?;
            if persistent && stored_sublayer.flags & 1 == 0 {
                return Err(codes::FWP_E_LIFETIME_MISMATCH);
            }
            // SAFETY: the provider key is null or points to a GUID.
            let provider = unsafe { f.providerKey.as_ref() }.map(raw::from_guid);
            if let Some(p) = provider {
                let stored = inner
                    .state
                    .providers
                    .get(&p)
                    .ok_or(codes::FWP_E_PROVIDER_NOT_FOUND)?;
                if persistent && stored.flags & 1 == 0 {
                    return Err(codes::FWP_E_LIFETIME_MISMATCH);
                }
            }
            let weight = match f.weight.r#type {
                0 => 0,
                data_type::UINT8 => {
                    // SAFETY: the tag says `uint8` is live.
                    let range = unsafe { f.weight.Anonymous.uint8 };
                    if range > 15 {
                        return Err(FWP_E_INVALID_WEIGHT);
                    }
                    u64::from(range) << 60
                }
                4 => {
                    // SAFETY: the tag says `uint64` is live; it points to the value.
                    *unsafe { f.weight.Anonymous.uint64.as_ref() }.ok_or(FWP_E_NULL_POINTER)?
                }
                _ => return Err(FWP_E_INVALID_WEIGHT),
            };
            if f.action.r#type != super::safe::ACTION_BLOCK
                && f.action.r#type != super::safe::ACTION_PERMIT
            {
                return Err(FWP_E_INVALID_ACTION_TYPE);
            }
            if f.numFilterConditions > 0 && f.filterCondition.is_null() {
                return Err(FWP_E_NULL_POINTER);
            }
            let mut conditions = Vec::new();
            for i in 0..f.numFilterConditions as usize {
                // SAFETY: the array holds `numFilterConditions` conditions per the contract.
                let c = unsafe { &*f.filterCondition.add(i) };
                let field = FieldKey(raw::from_guid(&c.fieldKey));
                if !spec::layer_has_field(LayerKey(layer), field) {
                    return Err(codes::FWP_E_CONDITION_NOT_FOUND);
                }
                if !accepted_types(field).contains(&c.conditionValue.r#type) {
                    return Err(codes::FWP_E_TYPE_MISMATCH);
                }
                if !match_allowed(c.matchType, c.conditionValue.r#type) {
                    return Err(codes::FWP_E_MATCH_TYPE_MISMATCH);
                }
                // SAFETY: the condition is valid and its member matches its (checked) tag.
                let stored = unsafe { read_condition(c) }?;
                if let Value::Sd(bytes) = &stored.value {
                    let control = bytes.get(2..4).map(|b| u16::from_le_bytes([b[0], b[1]]));
                    if control.is_none_or(|c| c & SE_SELF_RELATIVE == 0) {
                        return Err(codes::ERROR_INVALID_SECURITY_DESCR);
                    }
                }
                conditions.push(stored);
            }
            if key == Guid(0) {
                key = Guid(
                    0xfa4e_0000_0000_0000_0000_0000_0000_0000 | u128::from(inner.state.next_id + 1),
                );
            }
            inner.state.next_id += 1;
            let run_time_id = inner.state.next_id;
            inner.state.filters.insert(
                key,
                StoredFilter {
                    name,
                    description,
                    flags: f.flags,
                    provider,
                    layer,
                    sublayer,
                    weight,
                    conditions,
                    action: f.action.r#type,
                    id: run_time_id,
                },
            );
            // SAFETY: `id` is null or writable per the contract.
            if let Some(out) = unsafe { id.as_mut() } {
                *out = run_time_id;
            }
            Ok(())
        })())
    }

    unsafe fn filter_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
        code((|| {
            let mut inner = self.begin_call("filter_delete_by_key")?;
            inner.change(engine)?;
            // SAFETY: a non-null key points to a GUID per the contract.
            let key = raw::from_guid(unsafe { key.as_ref() }.ok_or(FWP_E_NULL_POINTER)?);
            inner
                .state
                .filters
                .remove(&key)
                .map(drop)
                .ok_or(codes::FWP_E_FILTER_NOT_FOUND)
        })())
    }

    unsafe fn filter_create_enum_handle(
        &self,
        engine: HANDLE,
        template: *const raw::FWPM_FILTER_ENUM_TEMPLATE0,
        handle: *mut HANDLE,
    ) -> u32 {
        code((|| {
            let mut inner = self.begin_call("filter_create_enum_handle")?;
            inner.session(engine)?;
            // SAFETY: a non-null template points to a valid structure per the contract.
            let template = unsafe { template.as_ref() };
            // SAFETY: the template's provider key is null or points to a GUID.
            let provider = template
                .and_then(|t| unsafe { t.providerKey.as_ref() })
                .map(raw::from_guid);
            let layer = template
                .map(|t| raw::from_guid(&t.layerKey))
                .filter(|l| *l != Guid(0));
            let items = inner
                .state
                .filters
                .iter()
                .filter(|(_, f)| provider.is_none() || f.provider == provider)
                .filter(|(_, f)| layer.is_none() || Some(f.layer) == layer)
                .map(|(k, f)| (*k, f.clone()))
                .collect();
            let h = inner.new_handle();
            inner.enums.insert(
                h,
                Enumeration::Filters {
                    session: engine as usize,
                    items,
                    at: 0,
                },
            );
            // SAFETY: `handle` is writable per the contract (null is refused).
            unsafe { handle.as_mut() }
                .map(|out| *out = h as HANDLE)
                .ok_or(FWP_E_NULL_POINTER)
        })())
    }

    unsafe fn filter_enum(
        &self,
        engine: HANDLE,
        handle: HANDLE,
        requested: u32,
        entries: *mut *mut *mut raw::FWPM_FILTER0,
        returned: *mut u32,
    ) -> u32 {
        code((|| {
            let mut inner = self.begin_call("filter_enum")?;
            inner.session(engine)?;
            let Some(Enumeration::Filters { items, at, .. }) =
                inner.enums.get_mut(&(handle as usize))
            else {
                return Err(ERROR_INVALID_HANDLE);
            };
            let end = (*at + requested as usize).min(items.len());
            let batch: Vec<StoredFilterWithKey> = items[*at..end].to_vec();
            *at = end;
            let mut filters: Vec<Box<FilterMemory>> =
                batch.iter().map(|(k, f)| filter_memory(*k, f)).collect();
            let mut array: Vec<*mut raw::FWPM_FILTER0> =
                filters.iter_mut().map(|m| &mut m.raw as *mut _).collect();
            let ptr = if array.is_empty() {
                std::ptr::null_mut()
            } else {
                array.as_mut_ptr()
            };
            if !ptr.is_null() {
                inner
                    .allocations
                    .insert(ptr as usize, Allocation::Filters { array, filters });
            }
            // SAFETY: `entries` and `returned` are writable per the contract.
            unsafe {
                *entries = ptr;
                *returned = batch.len() as u32;
            }
            Ok(())
        })())
    }

    unsafe fn filter_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32 {
        code((|| {
            let mut inner = self.begin_call("filter_destroy_enum_handle")?;
            inner.session(engine)?;
            match inner.enums.remove(&(handle as usize)) {
                Some(Enumeration::Filters { .. }) => Ok(()),
                _ => Err(ERROR_INVALID_HANDLE),
            }
        })())
    }

    unsafe fn free_memory(&self, p: *mut *mut c_void) {
        // Not recorded among the calls: it returns nothing, so there is no failure to inject.
        let mut inner = self.lock();
        // SAFETY: `p` points to the caller's pointer variable per the contract.
        let Some(slot) = (unsafe { p.as_mut() }) else {
            return;
        };
        if slot.is_null() {
            return;
        }
        if inner.allocations.remove(&(*slot as usize)).is_none() {
            inner.bad_frees += 1;
        }
        *slot = std::ptr::null_mut();
    }
}

#[cfg(test)]
mod tests {
    use super::super::safe::{self, Engine, ObjectKind, OwnedFilter, OwnedProvider, OwnedSublayer};
    use super::super::spec::{Condition, FilterSpec};
    use super::*;

    fn account() -> Sid {
        "S-1-5-21-1-2-3-1001".parse().unwrap()
    }

    fn dns_spec() -> FilterSpec {
        let policy = crate::policy::Policy::preset(crate::policy::Preset::BypassSurfaces);
        spec::filters(&policy, &[account()]).unwrap().remove(4)
    }

    fn ready(engine: &FakeEngine) -> Engine<'_> {
        let e = Engine::open(engine).unwrap();
        assert_eq!(safe::provider_add(&e, &OwnedProvider::ours()), codes::OK);
        assert_eq!(safe::sublayer_add(&e, &OwnedSublayer::ours()), codes::OK);
        e
    }

    /// Adds `filter` after letting `edit` change its raw structure.
    fn add_edited(
        e: &Engine<'_>,
        filter: &OwnedFilter,
        edit: impl FnOnce(&mut raw::FWPM_FILTER0),
    ) -> u32 {
        let mut raw_filter = filter.raw();
        edit(&mut raw_filter);
        let mut id = 0;
        // SAFETY: `raw_filter` points into `filter` (and whatever `edit` pointed it at, which
        // the callers keep alive); `id` is writable.
        unsafe { e.api().filter_add(e.handle(), &raw_filter, &mut id) }
    }

    #[test]
    fn objects_follow_the_documented_existence_rules() {
        let engine = FakeEngine::new();
        let e = ready(&engine);
        assert_eq!(
            safe::provider_add(&e, &OwnedProvider::ours()),
            codes::FWP_E_ALREADY_EXISTS
        );
        assert_eq!(
            safe::sublayer_add(&e, &OwnedSublayer::ours()),
            codes::FWP_E_ALREADY_EXISTS
        );
        let filter = OwnedFilter::new(&dns_spec());
        assert_eq!(safe::filter_add(&e, &filter), codes::OK);
        assert_eq!(safe::filter_add(&e, &filter), codes::FWP_E_ALREADY_EXISTS);
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Sublayer, crate::ids::WFP_SUBLAYER),
            codes::FWP_E_IN_USE
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Provider, crate::ids::WFP_PROVIDER),
            codes::FWP_E_IN_USE
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Filter, crate::ids::DNS_V4.0),
            codes::OK
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Filter, crate::ids::DNS_V4.0),
            codes::FWP_E_FILTER_NOT_FOUND
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Sublayer, crate::ids::WFP_SUBLAYER),
            codes::OK
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Sublayer, crate::ids::WFP_SUBLAYER),
            codes::FWP_E_SUBLAYER_NOT_FOUND
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Provider, crate::ids::WFP_PROVIDER),
            codes::OK
        );
        assert_eq!(
            safe::delete_by_key(&e, ObjectKind::Provider, crate::ids::WFP_PROVIDER),
            codes::FWP_E_PROVIDER_NOT_FOUND
        );
        assert_eq!(
            safe::filter_add(&e, &filter),
            codes::FWP_E_SUBLAYER_NOT_FOUND
        );
    }

    #[test]
    fn a_persistent_filter_needs_a_persistent_sublayer_and_provider() {
        let engine = FakeEngine::new();
        let e = Engine::open(&engine).unwrap();
        engine.edit_state(|s| {
            s.providers.insert(
                crate::ids::WFP_PROVIDER,
                StoredProvider {
                    name: "p".into(),
                    flags: 0,
                },
            );
        });
        assert_eq!(
            safe::sublayer_add(&e, &OwnedSublayer::ours()),
            codes::FWP_E_LIFETIME_MISMATCH
        );
        engine.edit_state(|s| {
            s.sublayers.insert(
                crate::ids::WFP_SUBLAYER,
                StoredSublayer {
                    name: "s".into(),
                    flags: 0,
                    provider: None,
                    weight: 1,
                },
            );
        });
        assert_eq!(
            safe::filter_add(&e, &OwnedFilter::new(&dns_spec())),
            codes::FWP_E_LIFETIME_MISMATCH
        );
    }

    #[test]
    fn conditions_are_checked_against_the_layer_and_their_types() {
        let engine = FakeEngine::new();
        let e = ready(&engine);
        let mut at_bind = dns_spec();
        at_bind.layer = spec::ALE_RESOURCE_ASSIGNMENT_V4;
        assert_eq!(
            safe::filter_add(&e, &OwnedFilter::new(&at_bind)),
            codes::FWP_E_CONDITION_NOT_FOUND
        );

        let filter = OwnedFilter::new(&dns_spec());
        let mut conditions: Vec<raw::FWPM_FILTER_CONDITION0> = Vec::new();
        let mut port_as_u32 = filter.raw();
        // SAFETY: the raw structure points into `filter`, alive for this whole test.
        conditions.extend_from_slice(unsafe {
            std::slice::from_raw_parts(port_as_u32.filterCondition, 2)
        });
        conditions[1].conditionValue = raw::FWP_CONDITION_VALUE0 {
            r#type: data_type::UINT32,
            Anonymous: raw::FWP_CONDITION_VALUE0_0 { uint32: 53 },
        };
        port_as_u32.filterCondition = conditions.as_mut_ptr();
        assert_eq!(
            add_edited(&e, &filter, |f| *f = port_as_u32),
            codes::FWP_E_TYPE_MISMATCH
        );

        let mut sd_range = conditions.clone();
        sd_range[1].conditionValue = raw::FWP_CONDITION_VALUE0 {
            r#type: data_type::UINT16,
            Anonymous: raw::FWP_CONDITION_VALUE0_0 { uint16: 53 },
        };
        sd_range[0].matchType = 5; // FWP_MATCH_RANGE on a security descriptor
        assert_eq!(
            add_edited(&e, &filter, |f| f.filterCondition = sd_range.as_mut_ptr()),
            codes::FWP_E_MATCH_TYPE_MISMATCH
        );

        let mut absolute = dns_spec();
        if let Condition::User(sd) = &mut absolute.conditions[0] {
            sd[3] &= 0x7F; // clear SE_SELF_RELATIVE
        }
        assert_eq!(
            safe::filter_add(&e, &OwnedFilter::new(&absolute)),
            codes::ERROR_INVALID_SECURITY_DESCR
        );
        assert_eq!(
            add_edited(&e, &filter, |f| f.displayData.name = std::ptr::null_mut()),
            codes::FWP_E_NULL_DISPLAY_NAME
        );
        assert_eq!(
            add_edited(&e, &filter, |f| f.layerKey = GUID::from_u128(7)),
            codes::FWP_E_LAYER_NOT_FOUND
        );
        assert_eq!(
            add_edited(&e, &filter, |f| f.flags |= FILTER_FLAG_BOOTTIME),
            codes::FWP_E_INVALID_FLAGS
        );
        assert!(
            engine.state().filters.is_empty(),
            "a refused add left something behind"
        );
    }

    #[test]
    fn transactions_follow_the_documented_rules() {
        let engine = FakeEngine::new();
        let e = Engine::open(&engine).unwrap();
        // SAFETY: the handle is open for the whole test (so for the calls below).
        let code = unsafe { engine.transaction_commit(e.handle()) };
        assert_eq!(code, codes::FWP_E_NO_TXN_IN_PROGRESS);
        // SAFETY: as above.
        let code = unsafe { engine.transaction_abort(e.handle()) };
        assert_eq!(code, codes::FWP_E_NO_TXN_IN_PROGRESS);
        let txn = e.transaction().unwrap();
        // SAFETY: as above.
        let code = unsafe { engine.transaction_begin(e.handle(), 0) };
        assert_eq!(code, codes::FWP_E_TXN_IN_PROGRESS);
        assert_eq!(safe::provider_add(&e, &OwnedProvider::ours()), codes::OK);
        drop(txn); // aborts
        assert!(engine.state().providers.is_empty(), "abort kept an add");
        // SAFETY: as above.
        let code = unsafe { engine.transaction_begin(e.handle(), 1) };
        assert_eq!(code, codes::OK);
        assert_eq!(
            safe::provider_add(&e, &OwnedProvider::ours()),
            FWP_E_INCOMPATIBLE_TXN
        );
    }

    #[test]
    fn enumeration_memory_is_tracked_and_closing_aborts() {
        let engine = FakeEngine::new();
        {
            let e = ready(&engine);
            let txn = e.transaction().unwrap();
            assert_eq!(
                safe::filter_add(&e, &OwnedFilter::new(&dns_spec())),
                codes::OK
            );
            assert_eq!(safe::our_filters(&e).unwrap().len(), 1);
            std::mem::forget(txn); // the session closes with the transaction still open
        }
        assert!(
            engine.state().filters.is_empty(),
            "closing the session did not abort"
        );
        assert_eq!(engine.leaks(), (0, 0, 0, 0));
        let mut bogus = 0xdead_usize as *mut c_void;
        // SAFETY: free_memory only compares the pointer with what it handed out.
        unsafe { engine.free_memory(&mut bogus) };
        assert_eq!(
            engine.leaks().3,
            1,
            "a free of an unknown pointer is counted"
        );
    }
}
