//! The raw layer: windows-sys types, and one trait that mirrors the Fwpm*0 calls userwall
//! makes, so the logic above can run against Windows or against [`super::fake`].
//!
//! Every method has the C function's contract: pointers must be valid for the call, handles
//! must come from the same implementation, and memory an enumeration returns is released with
//! [`Fwpm::free_memory`]. The real implementation ([`WindowsFwpm`]) is compiled on Windows,
//! and on Linux under `--cfg userwall_wfp_check` so CI type-checks it (it cannot link there).

pub use windows_sys::core::GUID;
pub use windows_sys::Win32::Foundation::HANDLE;
pub use windows_sys::Win32::NetworkManagement::WindowsFilteringPlatform::{
    FWPM_ACTION0, FWPM_ACTION0_0, FWPM_DISPLAY_DATA0, FWPM_FILTER0, FWPM_FILTER0_0,
    FWPM_FILTER_CONDITION0, FWPM_FILTER_ENUM_TEMPLATE0, FWPM_PROVIDER0, FWPM_SESSION0,
    FWPM_SUBLAYER0, FWPM_SUBLAYER_ENUM_TEMPLATE0, FWP_BYTE_BLOB, FWP_CONDITION_VALUE0,
    FWP_CONDITION_VALUE0_0, FWP_VALUE0, FWP_VALUE0_0,
};

use crate::ids::Guid;

/// The Fwpm*0 calls userwall makes, one method each, same arguments (minus the ones userwall
/// always passes as NULL: server name, auth identity, security descriptors of new objects).
///
/// # Safety
/// Implementations read and write through the pointers exactly as the C functions do. Callers
/// pass pointers valid for the duration of the call.
#[allow(clippy::missing_safety_doc)]
pub trait Fwpm {
    /// FwpmEngineOpen0(NULL, RPC_C_AUTHN_DEFAULT, NULL, session, handle).
    unsafe fn engine_open(&self, session: *const FWPM_SESSION0, handle: *mut HANDLE) -> u32;
    /// FwpmEngineClose0.
    unsafe fn engine_close(&self, engine: HANDLE) -> u32;
    /// FwpmTransactionBegin0.
    unsafe fn transaction_begin(&self, engine: HANDLE, flags: u32) -> u32;
    /// FwpmTransactionCommit0.
    unsafe fn transaction_commit(&self, engine: HANDLE) -> u32;
    /// FwpmTransactionAbort0.
    unsafe fn transaction_abort(&self, engine: HANDLE) -> u32;
    /// FwpmProviderAdd0(engine, provider, NULL).
    unsafe fn provider_add(&self, engine: HANDLE, provider: *const FWPM_PROVIDER0) -> u32;
    /// FwpmProviderDeleteByKey0.
    unsafe fn provider_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32;
    /// FwpmSubLayerAdd0(engine, sublayer, NULL).
    unsafe fn sublayer_add(&self, engine: HANDLE, sublayer: *const FWPM_SUBLAYER0) -> u32;
    /// FwpmSubLayerDeleteByKey0.
    unsafe fn sublayer_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32;
    /// FwpmSubLayerCreateEnumHandle0.
    unsafe fn sublayer_create_enum_handle(
        &self,
        engine: HANDLE,
        template: *const FWPM_SUBLAYER_ENUM_TEMPLATE0,
        handle: *mut HANDLE,
    ) -> u32;
    /// FwpmSubLayerEnum0.
    unsafe fn sublayer_enum(
        &self,
        engine: HANDLE,
        handle: HANDLE,
        requested: u32,
        entries: *mut *mut *mut FWPM_SUBLAYER0,
        returned: *mut u32,
    ) -> u32;
    /// FwpmSubLayerDestroyEnumHandle0.
    unsafe fn sublayer_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32;
    /// FwpmFilterAdd0(engine, filter, NULL, id).
    unsafe fn filter_add(&self, engine: HANDLE, filter: *const FWPM_FILTER0, id: *mut u64) -> u32;
    /// FwpmFilterDeleteByKey0.
    unsafe fn filter_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32;
    /// FwpmFilterCreateEnumHandle0.
    unsafe fn filter_create_enum_handle(
        &self,
        engine: HANDLE,
        template: *const FWPM_FILTER_ENUM_TEMPLATE0,
        handle: *mut HANDLE,
    ) -> u32;
    /// FwpmFilterEnum0.
    unsafe fn filter_enum(
        &self,
        engine: HANDLE,
        handle: HANDLE,
        requested: u32,
        entries: *mut *mut *mut FWPM_FILTER0,
        returned: *mut u32,
    ) -> u32;
    /// FwpmFilterDestroyEnumHandle0.
    unsafe fn filter_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32;
    /// FwpmFreeMemory0.
    unsafe fn free_memory(&self, p: *mut *mut core::ffi::c_void);
}

/// Our GUID type to windows-sys's.
pub fn to_guid(g: Guid) -> GUID {
    GUID::from_u128(g.0)
}

/// windows-sys's GUID type to ours.
pub fn from_guid(g: &GUID) -> Guid {
    Guid(
        (u128::from(g.data1) << 96)
            | (u128::from(g.data2) << 80)
            | (u128::from(g.data3) << 64)
            | u128::from(u64::from_be_bytes(g.data4)),
    )
}

/// Result codes, with the names Windows gives them (winerror.h, the WFP error-code page).
pub mod codes {
    /// Success.
    pub const OK: u32 = 0;
    /// Access denied (a plain Win32 code, not an HRESULT): not elevated.
    pub const ERROR_ACCESS_DENIED: u32 = 5;
    /// E_ACCESSDENIED: access denied as an HRESULT (some calls report it this way).
    pub const E_ACCESSDENIED: u32 = 0x8007_0005;
    /// The transaction lock was not acquired in time.
    pub const FWP_E_TIMEOUT: u32 = 0x8032_0012;
    /// From a dynamic session, deleting an object that session did not add.
    pub const FWP_E_DYNAMIC_SESSION_IN_PROGRESS: u32 = 0x8032_000B;
    /// EPT_S_NOT_REGISTERED: the Base Filtering Engine is stopped or disabled.
    pub const EPT_S_NOT_REGISTERED: u32 = 1753;
    /// A condition names a field its layer does not have (likely code; not confirmed).
    pub const FWP_E_CONDITION_NOT_FOUND: u32 = 0x8032_0002;
    /// No filter with that key.
    pub const FWP_E_FILTER_NOT_FOUND: u32 = 0x8032_0003;
    /// Unknown layer.
    pub const FWP_E_LAYER_NOT_FOUND: u32 = 0x8032_0004;
    /// No provider with that key.
    pub const FWP_E_PROVIDER_NOT_FOUND: u32 = 0x8032_0005;
    /// No sublayer with that key.
    pub const FWP_E_SUBLAYER_NOT_FOUND: u32 = 0x8032_0007;
    /// Generic not found.
    pub const FWP_E_NOT_FOUND: u32 = 0x8032_0008;
    /// An object with that key exists.
    pub const FWP_E_ALREADY_EXISTS: u32 = 0x8032_0009;
    /// Still referenced by another object.
    pub const FWP_E_IN_USE: u32 = 0x8032_000A;
    /// Commit or abort without a transaction.
    pub const FWP_E_NO_TXN_IN_PROGRESS: u32 = 0x8032_000D;
    /// Begin inside a transaction.
    pub const FWP_E_TXN_IN_PROGRESS: u32 = 0x8032_000E;
    /// A persistent object refers to one that can die sooner.
    pub const FWP_E_LIFETIME_MISMATCH: u32 = 0x8032_0016;
    /// Invalid flag combination.
    pub const FWP_E_INVALID_FLAGS: u32 = 0x8032_001E;
    /// An object without a display name.
    pub const FWP_E_NULL_DISPLAY_NAME: u32 = 0x8032_0023;
    /// The match type is not allowed for the value type.
    pub const FWP_E_MATCH_TYPE_MISMATCH: u32 = 0x8032_0026;
    /// The value type is not the field's type.
    pub const FWP_E_TYPE_MISMATCH: u32 = 0x8032_0027;
    /// An absolute-format security descriptor where a self-relative one is required.
    pub const ERROR_INVALID_SECURITY_DESCR: u32 = 0x8007_053A;

    /// The symbolic name of a code, for messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            OK => "ERROR_SUCCESS",
            ERROR_ACCESS_DENIED => "ERROR_ACCESS_DENIED",
            E_ACCESSDENIED => "E_ACCESSDENIED",
            FWP_E_TIMEOUT => "FWP_E_TIMEOUT (another session held the transaction lock)",
            FWP_E_DYNAMIC_SESSION_IN_PROGRESS => "FWP_E_DYNAMIC_SESSION_IN_PROGRESS",
            EPT_S_NOT_REGISTERED => "EPT_S_NOT_REGISTERED (Base Filtering Engine not running)",
            FWP_E_CONDITION_NOT_FOUND => "FWP_E_CONDITION_NOT_FOUND",
            FWP_E_FILTER_NOT_FOUND => "FWP_E_FILTER_NOT_FOUND",
            FWP_E_LAYER_NOT_FOUND => "FWP_E_LAYER_NOT_FOUND",
            FWP_E_PROVIDER_NOT_FOUND => "FWP_E_PROVIDER_NOT_FOUND",
            FWP_E_SUBLAYER_NOT_FOUND => "FWP_E_SUBLAYER_NOT_FOUND",
            FWP_E_NOT_FOUND => "FWP_E_NOT_FOUND",
            FWP_E_ALREADY_EXISTS => "FWP_E_ALREADY_EXISTS",
            FWP_E_IN_USE => "FWP_E_IN_USE",
            FWP_E_NO_TXN_IN_PROGRESS => "FWP_E_NO_TXN_IN_PROGRESS",
            FWP_E_TXN_IN_PROGRESS => "FWP_E_TXN_IN_PROGRESS",
            FWP_E_LIFETIME_MISMATCH => "FWP_E_LIFETIME_MISMATCH",
            FWP_E_INVALID_FLAGS => "FWP_E_INVALID_FLAGS",
            FWP_E_NULL_DISPLAY_NAME => "FWP_E_NULL_DISPLAY_NAME",
            FWP_E_MATCH_TYPE_MISMATCH => "FWP_E_MATCH_TYPE_MISMATCH",
            FWP_E_TYPE_MISMATCH => "FWP_E_TYPE_MISMATCH",
            ERROR_INVALID_SECURITY_DESCR => "ERROR_INVALID_SECURITY_DESCR",
            _ => "an unlisted code",
        }
    }
}

/// The real calls, through windows-sys. Compiled on Windows, and type-checked on Linux with
/// `RUSTFLAGS="--cfg userwall_wfp_check" cargo check`.
#[cfg(any(windows, userwall_wfp_check))]
pub struct WindowsFwpm;

#[cfg(any(windows, userwall_wfp_check))]
mod windows_impl {
    use super::*;
    use windows_sys::Win32::NetworkManagement::WindowsFilteringPlatform as wfp;
    use windows_sys::Win32::System::Rpc::RPC_C_AUTHN_DEFAULT;

    // SAFETY (for every method below): each forwards its arguments unchanged to the Fwpm*0
    // function of the same name, whose contract is the trait method's; the NULL arguments are
    // the documented "none" values (local engine, caller's credentials, default object
    // security).
    impl Fwpm for WindowsFwpm {
        unsafe fn engine_open(&self, session: *const FWPM_SESSION0, handle: *mut HANDLE) -> u32 {
            // SAFETY: see the impl comment; RPC_C_AUTHN_DEFAULT is the documented default.
            unsafe {
                wfp::FwpmEngineOpen0(
                    std::ptr::null(),
                    RPC_C_AUTHN_DEFAULT as u32,
                    std::ptr::null(),
                    session,
                    handle,
                )
            }
        }
        unsafe fn engine_close(&self, engine: HANDLE) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmEngineClose0(engine) }
        }
        unsafe fn transaction_begin(&self, engine: HANDLE, flags: u32) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmTransactionBegin0(engine, flags) }
        }
        unsafe fn transaction_commit(&self, engine: HANDLE) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmTransactionCommit0(engine) }
        }
        unsafe fn transaction_abort(&self, engine: HANDLE) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmTransactionAbort0(engine) }
        }
        unsafe fn provider_add(&self, engine: HANDLE, provider: *const FWPM_PROVIDER0) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmProviderAdd0(engine, provider, std::ptr::null_mut()) }
        }
        unsafe fn provider_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmProviderDeleteByKey0(engine, key) }
        }
        unsafe fn sublayer_add(&self, engine: HANDLE, sublayer: *const FWPM_SUBLAYER0) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmSubLayerAdd0(engine, sublayer, std::ptr::null_mut()) }
        }
        unsafe fn sublayer_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmSubLayerDeleteByKey0(engine, key) }
        }
        unsafe fn sublayer_create_enum_handle(
            &self,
            engine: HANDLE,
            template: *const FWPM_SUBLAYER_ENUM_TEMPLATE0,
            handle: *mut HANDLE,
        ) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmSubLayerCreateEnumHandle0(engine, template, handle) }
        }
        unsafe fn sublayer_enum(
            &self,
            engine: HANDLE,
            handle: HANDLE,
            requested: u32,
            entries: *mut *mut *mut FWPM_SUBLAYER0,
            returned: *mut u32,
        ) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmSubLayerEnum0(engine, handle, requested, entries, returned) }
        }
        unsafe fn sublayer_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmSubLayerDestroyEnumHandle0(engine, handle) }
        }
        unsafe fn filter_add(
            &self,
            engine: HANDLE,
            filter: *const FWPM_FILTER0,
            id: *mut u64,
        ) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFilterAdd0(engine, filter, std::ptr::null_mut(), id) }
        }
        unsafe fn filter_delete_by_key(&self, engine: HANDLE, key: *const GUID) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFilterDeleteByKey0(engine, key) }
        }
        unsafe fn filter_create_enum_handle(
            &self,
            engine: HANDLE,
            template: *const FWPM_FILTER_ENUM_TEMPLATE0,
            handle: *mut HANDLE,
        ) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFilterCreateEnumHandle0(engine, template, handle) }
        }
        unsafe fn filter_enum(
            &self,
            engine: HANDLE,
            handle: HANDLE,
            requested: u32,
            entries: *mut *mut *mut FWPM_FILTER0,
            returned: *mut u32,
        ) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFilterEnum0(engine, handle, requested, entries, returned) }
        }
        unsafe fn filter_destroy_enum_handle(&self, engine: HANDLE, handle: HANDLE) -> u32 {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFilterDestroyEnumHandle0(engine, handle) }
        }
        unsafe fn free_memory(&self, p: *mut *mut core::ffi::c_void) {
            // SAFETY: see the impl comment.
            unsafe { wfp::FwpmFreeMemory0(p) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_convert_both_ways_in_windows_field_order() {
        let ours = crate::ids::WFP_PROVIDER;
        let theirs = to_guid(ours);
        assert_eq!(theirs.data1, 0x0c4b6bec);
        assert_eq!(
            theirs.data4,
            [0xb1, 0xa7, 0xfb, 0x37, 0x82, 0x25, 0xc2, 0x33]
        );
        assert_eq!(from_guid(&theirs), ours);
    }
}
