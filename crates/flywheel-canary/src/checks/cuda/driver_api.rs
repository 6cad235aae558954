//! The part of CUDA's driver API (`libcuda.so.1`) the cuda step uses, opened at run time, with
//! the C types written by hand from `cuda.h` and wrapped in owning handles that free what they
//! hold when dropped.
//!
//! Lifetimes keep the order of teardown right: buffers, streams, events and modules borrow the
//! [`Context`] they were made in, so they are freed before it is destroyed, and the context
//! borrows the [`Api`].
//!
//! Every call assumes the context it works in is current on the calling thread, which holds
//! because `cuCtxCreate_v2` makes the new context current and the step makes one context at a
//! time, on one thread, and destroys it before the next.

// CUDA's driver API is C, and it is opened at run time with dlopen (so the canary builds and runs
// on machines without a GPU): every call into it is FFI, and these wrappers are where the unsafe
// code lives. The rest of the step is safe Rust on top of them.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::ptr;

use libloading::Library;

/// `CUresult`: 0 is success.
pub type CuResult = c_int;
/// `CUdevice`: an ordinal, as the driver hands it out.
type CuDevice = c_int;
/// `CUdeviceptr` (64-bit since CUDA 3.2: the `_v2` entry points).
type CuDevicePtr = u64;
/// `CUcontext`, `CUmodule`, `CUfunction`, `CUstream`, `CUevent`: opaque pointers.
type Handle = *mut c_void;
/// `CUjit_option`, a C enum.
type CuJitOption = c_int;
/// `CUdevice_attribute`, a C enum.
type CuDeviceAttribute = c_int;

// CUresult values the step treats specially (cuda.h, enum cudaError_enum).
pub const CUDA_SUCCESS: CuResult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
pub const CUDA_ERROR_STUB_LIBRARY: CuResult = 34;
pub const CUDA_ERROR_DEVICE_UNAVAILABLE: CuResult = 46;
pub const CUDA_ERROR_NO_DEVICE: CuResult = 100;
pub const CUDA_ERROR_INVALID_PTX: CuResult = 218;
pub const CUDA_ERROR_JIT_COMPILER_NOT_FOUND: CuResult = 221;
pub const CUDA_ERROR_UNSUPPORTED_PTX_VERSION: CuResult = 222;
pub const CUDA_ERROR_JIT_COMPILATION_DISABLED: CuResult = 223;
pub const CUDA_ERROR_SYSTEM_NOT_READY: CuResult = 802;
pub const CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: CuResult = 803;
pub const CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: CuResult = 804;

// CUdevice_attribute values.
pub const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: CuDeviceAttribute = 16;
pub const CU_DEVICE_ATTRIBUTE_ECC_ENABLED: CuDeviceAttribute = 32;
pub const CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: CuDeviceAttribute = 33;
pub const CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: CuDeviceAttribute = 34;
pub const CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: CuDeviceAttribute = 50;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: CuDeviceAttribute = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: CuDeviceAttribute = 76;

// CUjit_option values.
const CU_JIT_INFO_LOG_BUFFER: CuJitOption = 3;
const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: CuJitOption = 4;
const CU_JIT_ERROR_LOG_BUFFER: CuJitOption = 5;
const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: CuJitOption = 6;

/// Bytes for each of the JIT's logs.
const JIT_LOG_BYTES: usize = 16 << 10;

/// Every `CUresult` that `cuda.h` (CUDA 12/13) names, for when `cuGetErrorName` cannot say.
pub fn error_name(code: CuResult) -> Option<&'static str> {
    Some(match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        5 => "CUDA_ERROR_PROFILER_DISABLED",
        6 => "CUDA_ERROR_PROFILER_NOT_INITIALIZED",
        7 => "CUDA_ERROR_PROFILER_ALREADY_STARTED",
        8 => "CUDA_ERROR_PROFILER_ALREADY_STOPPED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        102 => "CUDA_ERROR_DEVICE_NOT_LICENSED",
        200 => "CUDA_ERROR_INVALID_IMAGE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        202 => "CUDA_ERROR_CONTEXT_ALREADY_CURRENT",
        205 => "CUDA_ERROR_MAP_FAILED",
        206 => "CUDA_ERROR_UNMAP_FAILED",
        207 => "CUDA_ERROR_ARRAY_IS_MAPPED",
        208 => "CUDA_ERROR_ALREADY_MAPPED",
        209 => "CUDA_ERROR_NO_BINARY_FOR_GPU",
        210 => "CUDA_ERROR_ALREADY_ACQUIRED",
        211 => "CUDA_ERROR_NOT_MAPPED",
        212 => "CUDA_ERROR_NOT_MAPPED_AS_ARRAY",
        213 => "CUDA_ERROR_NOT_MAPPED_AS_POINTER",
        214 => "CUDA_ERROR_ECC_UNCORRECTABLE",
        215 => "CUDA_ERROR_UNSUPPORTED_LIMIT",
        216 => "CUDA_ERROR_CONTEXT_ALREADY_IN_USE",
        217 => "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
        218 => "CUDA_ERROR_INVALID_PTX",
        219 => "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT",
        220 => "CUDA_ERROR_NVLINK_UNCORRECTABLE",
        221 => "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
        222 => "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        223 => "CUDA_ERROR_JIT_COMPILATION_DISABLED",
        224 => "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY",
        225 => "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC",
        226 => "CUDA_ERROR_CONTAINED",
        300 => "CUDA_ERROR_INVALID_SOURCE",
        301 => "CUDA_ERROR_FILE_NOT_FOUND",
        302 => "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND",
        303 => "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED",
        304 => "CUDA_ERROR_OPERATING_SYSTEM",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        401 => "CUDA_ERROR_ILLEGAL_STATE",
        402 => "CUDA_ERROR_LOSSY_QUERY",
        500 => "CUDA_ERROR_NOT_FOUND",
        600 => "CUDA_ERROR_NOT_READY",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        701 => "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        702 => "CUDA_ERROR_LAUNCH_TIMEOUT",
        703 => "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING",
        704 => "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
        705 => "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED",
        708 => "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
        709 => "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        710 => "CUDA_ERROR_ASSERT",
        711 => "CUDA_ERROR_TOO_MANY_PEERS",
        712 => "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        713 => "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
        714 => "CUDA_ERROR_HARDWARE_STACK_ERROR",
        715 => "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        716 => "CUDA_ERROR_MISALIGNED_ADDRESS",
        717 => "CUDA_ERROR_INVALID_ADDRESS_SPACE",
        718 => "CUDA_ERROR_INVALID_PC",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        720 => "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        721 => "CUDA_ERROR_TENSOR_MEMORY_LEAK",
        800 => "CUDA_ERROR_NOT_PERMITTED",
        801 => "CUDA_ERROR_NOT_SUPPORTED",
        802 => "CUDA_ERROR_SYSTEM_NOT_READY",
        803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        804 => "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
        805 => "CUDA_ERROR_MPS_CONNECTION_FAILED",
        806 => "CUDA_ERROR_MPS_RPC_FAILURE",
        807 => "CUDA_ERROR_MPS_SERVER_NOT_READY",
        808 => "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED",
        809 => "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED",
        810 => "CUDA_ERROR_MPS_CLIENT_TERMINATED",
        811 => "CUDA_ERROR_CDP_NOT_SUPPORTED",
        812 => "CUDA_ERROR_CDP_VERSION_MISMATCH",
        900 => "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
        901 => "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        902 => "CUDA_ERROR_STREAM_CAPTURE_MERGE",
        903 => "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
        904 => "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
        905 => "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
        906 => "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
        907 => "CUDA_ERROR_CAPTURED_EVENT",
        908 => "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
        909 => "CUDA_ERROR_TIMEOUT",
        910 => "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE",
        911 => "CUDA_ERROR_EXTERNAL_DEVICE",
        912 => "CUDA_ERROR_INVALID_CLUSTER_SIZE",
        913 => "CUDA_ERROR_FUNCTION_NOT_LOADED",
        914 => "CUDA_ERROR_INVALID_RESOURCE_TYPE",
        915 => "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
        916 => "CUDA_ERROR_KEY_ROTATION",
        917 => "CUDA_ERROR_STREAM_DETACHED",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => return None,
    })
}

/// A failed driver call: which call, and the driver's name and description of the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CuError {
    pub call: &'static str,
    pub code: CuResult,
    /// e.g. `CUDA_ERROR_NO_DEVICE`.
    pub name: String,
    /// e.g. `no CUDA-capable device is detected`.
    pub text: String,
}

impl CuError {
    /// An error from `code` without asking the driver to describe it (no library loaded, or a
    /// check this module makes before calling).
    pub fn offline(call: &'static str, code: CuResult, text: &str) -> Self {
        let name = error_name(code).map_or_else(|| format!("CUresult {code}"), str::to_string);
        CuError { call, code, name, text: text.to_string() }
    }
}

impl fmt::Display for CuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.call, self.name, self.text)
    }
}

impl std::error::Error for CuError {}

/// Why the library could not be used at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// dlopen failed; `name` is what was asked for, `error` what dlerror said.
    Open { name: String, error: String },
    /// The library loaded but lacks an entry point the step needs: not CUDA's driver library, or
    /// one too old.
    Symbol { name: String, symbol: &'static str, error: String },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { name, error } => f.write_str(&crate::libs::open_failure(name, error)),
            LoadError::Symbol { name, symbol, error } => {
                write!(f, "{name} has no {symbol}: not CUDA's driver library, or one too old ({error})")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// The driver's entry points, with their C signatures from `cuda.h`.
struct Fns {
    cu_init: unsafe extern "C" fn(flags: c_uint) -> CuResult,
    cu_driver_get_version: unsafe extern "C" fn(version: *mut c_int) -> CuResult,
    cu_get_error_name: unsafe extern "C" fn(error: CuResult, p_str: *mut *const c_char) -> CuResult,
    cu_get_error_string: unsafe extern "C" fn(error: CuResult, p_str: *mut *const c_char) -> CuResult,
    cu_device_get_count: unsafe extern "C" fn(count: *mut c_int) -> CuResult,
    cu_device_get: unsafe extern "C" fn(device: *mut CuDevice, ordinal: c_int) -> CuResult,
    cu_device_get_name: unsafe extern "C" fn(name: *mut c_char, len: c_int, dev: CuDevice) -> CuResult,
    cu_device_get_attribute: unsafe extern "C" fn(pi: *mut c_int, attrib: CuDeviceAttribute, dev: CuDevice) -> CuResult,
    cu_device_total_mem_v2: unsafe extern "C" fn(bytes: *mut usize, dev: CuDevice) -> CuResult,
    cu_ctx_create_v2: unsafe extern "C" fn(pctx: *mut Handle, flags: c_uint, dev: CuDevice) -> CuResult,
    cu_ctx_destroy_v2: unsafe extern "C" fn(ctx: Handle) -> CuResult,
    cu_ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    cu_mem_get_info_v2: unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> CuResult,
    cu_mem_alloc_v2: unsafe extern "C" fn(dptr: *mut CuDevicePtr, bytesize: usize) -> CuResult,
    cu_mem_free_v2: unsafe extern "C" fn(dptr: CuDevicePtr) -> CuResult,
    cu_mem_alloc_host_v2: unsafe extern "C" fn(pp: *mut *mut c_void, bytesize: usize) -> CuResult,
    cu_mem_free_host: unsafe extern "C" fn(p: *mut c_void) -> CuResult,
    cu_memcpy_htod_v2:
        unsafe extern "C" fn(dst_device: CuDevicePtr, src_host: *const c_void, byte_count: usize) -> CuResult,
    cu_memcpy_dtoh_v2:
        unsafe extern "C" fn(dst_host: *mut c_void, src_device: CuDevicePtr, byte_count: usize) -> CuResult,
    cu_memcpy_dtod_v2:
        unsafe extern "C" fn(dst_device: CuDevicePtr, src_device: CuDevicePtr, byte_count: usize) -> CuResult,
    cu_memcpy_htod_async_v2: unsafe extern "C" fn(
        dst_device: CuDevicePtr,
        src_host: *const c_void,
        byte_count: usize,
        stream: Handle,
    ) -> CuResult,
    cu_memcpy_dtoh_async_v2: unsafe extern "C" fn(
        dst_host: *mut c_void,
        src_device: CuDevicePtr,
        byte_count: usize,
        stream: Handle,
    ) -> CuResult,
    cu_memcpy_dtod_async_v2: unsafe extern "C" fn(
        dst_device: CuDevicePtr,
        src_device: CuDevicePtr,
        byte_count: usize,
        stream: Handle,
    ) -> CuResult,
    cu_stream_create: unsafe extern "C" fn(ph_stream: *mut Handle, flags: c_uint) -> CuResult,
    cu_stream_synchronize: unsafe extern "C" fn(stream: Handle) -> CuResult,
    cu_stream_destroy_v2: unsafe extern "C" fn(stream: Handle) -> CuResult,
    cu_event_create: unsafe extern "C" fn(ph_event: *mut Handle, flags: c_uint) -> CuResult,
    cu_event_record: unsafe extern "C" fn(event: Handle, stream: Handle) -> CuResult,
    cu_event_synchronize: unsafe extern "C" fn(event: Handle) -> CuResult,
    cu_event_elapsed_time: unsafe extern "C" fn(ms: *mut f32, start: Handle, end: Handle) -> CuResult,
    cu_event_destroy_v2: unsafe extern "C" fn(event: Handle) -> CuResult,
    cu_module_load_data_ex: unsafe extern "C" fn(
        module: *mut Handle,
        image: *const c_void,
        num_options: c_uint,
        options: *mut CuJitOption,
        option_values: *mut *mut c_void,
    ) -> CuResult,
    cu_module_get_function: unsafe extern "C" fn(hfunc: *mut Handle, hmod: Handle, name: *const c_char) -> CuResult,
    cu_module_unload: unsafe extern "C" fn(hmod: Handle) -> CuResult,
    cu_launch_kernel: unsafe extern "C" fn(
        f: Handle,
        grid_dim_x: c_uint,
        grid_dim_y: c_uint,
        grid_dim_z: c_uint,
        block_dim_x: c_uint,
        block_dim_y: c_uint,
        block_dim_z: c_uint,
        shared_mem_bytes: c_uint,
        stream: Handle,
        kernel_params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> CuResult,
}

/// Looks up `symbol` in `lib` as a `T`, a function pointer type.
///
/// # Safety
/// `T` must be the symbol's C signature.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str, symbol: &'static str) -> Result<T, LoadError> {
    // SAFETY: the caller vouches for the type; the pointer is used only while `lib` stays loaded
    // (Api keeps it loaded for the life of the process).
    match unsafe { lib.get::<T>(symbol.as_bytes()) } {
        Ok(s) => Ok(*s),
        Err(e) => Err(LoadError::Symbol { name: name.to_string(), symbol, error: e.to_string() }),
    }
}

/// CUDA's driver library, loaded, with every entry point the step uses resolved.
pub struct Api {
    fns: Fns,
    /// Never closed: once cuInit has run, the driver has threads and exit handlers in the library,
    /// and unloading it under them can crash the process. dlopen counts references, so loading
    /// it again (another run in the same process) reuses the mapping.
    _lib: ManuallyDrop<Library>,
}

impl Api {
    /// Opens `path`, or `libcuda.so.1` through the dynamic loader, and resolves every entry point
    /// up front: a missing one is an error here, never a crash later.
    pub fn load(path: Option<&Path>) -> Result<Api, LoadError> {
        let name = path.map_or_else(|| "libcuda.so.1".to_string(), |p| p.display().to_string());
        let target = path.map_or_else(|| "libcuda.so.1".into(), |p| p.as_os_str().to_owned());
        // SAFETY: loading a shared library runs its initializers; libcuda's are the driver's own.
        // A library that is not CUDA (a wrong --cuda-lib) is caught by the symbol lookups below.
        let lib = unsafe { Library::new(&target) }
            .map_err(|e| LoadError::Open { name: name.clone(), error: e.to_string() })?;
        let n = name.as_str();
        // SAFETY: each type below is the entry point's signature in cuda.h (CUDA 12/13): CUresult
        // and CUdevice are int, CUdeviceptr is unsigned long long, size_t is usize, and the handle
        // types and CUjit_option's values are pointers and ints as declared.
        let fns = unsafe {
            Fns {
                cu_init: symbol(&lib, n, "cuInit")?,
                cu_driver_get_version: symbol(&lib, n, "cuDriverGetVersion")?,
                cu_get_error_name: symbol(&lib, n, "cuGetErrorName")?,
                cu_get_error_string: symbol(&lib, n, "cuGetErrorString")?,
                cu_device_get_count: symbol(&lib, n, "cuDeviceGetCount")?,
                cu_device_get: symbol(&lib, n, "cuDeviceGet")?,
                cu_device_get_name: symbol(&lib, n, "cuDeviceGetName")?,
                cu_device_get_attribute: symbol(&lib, n, "cuDeviceGetAttribute")?,
                cu_device_total_mem_v2: symbol(&lib, n, "cuDeviceTotalMem_v2")?,
                cu_ctx_create_v2: symbol(&lib, n, "cuCtxCreate_v2")?,
                cu_ctx_destroy_v2: symbol(&lib, n, "cuCtxDestroy_v2")?,
                cu_ctx_synchronize: symbol(&lib, n, "cuCtxSynchronize")?,
                cu_mem_get_info_v2: symbol(&lib, n, "cuMemGetInfo_v2")?,
                cu_mem_alloc_v2: symbol(&lib, n, "cuMemAlloc_v2")?,
                cu_mem_free_v2: symbol(&lib, n, "cuMemFree_v2")?,
                cu_mem_alloc_host_v2: symbol(&lib, n, "cuMemAllocHost_v2")?,
                cu_mem_free_host: symbol(&lib, n, "cuMemFreeHost")?,
                cu_memcpy_htod_v2: symbol(&lib, n, "cuMemcpyHtoD_v2")?,
                cu_memcpy_dtoh_v2: symbol(&lib, n, "cuMemcpyDtoH_v2")?,
                cu_memcpy_dtod_v2: symbol(&lib, n, "cuMemcpyDtoD_v2")?,
                cu_memcpy_htod_async_v2: symbol(&lib, n, "cuMemcpyHtoDAsync_v2")?,
                cu_memcpy_dtoh_async_v2: symbol(&lib, n, "cuMemcpyDtoHAsync_v2")?,
                cu_memcpy_dtod_async_v2: symbol(&lib, n, "cuMemcpyDtoDAsync_v2")?,
                cu_stream_create: symbol(&lib, n, "cuStreamCreate")?,
                cu_stream_synchronize: symbol(&lib, n, "cuStreamSynchronize")?,
                cu_stream_destroy_v2: symbol(&lib, n, "cuStreamDestroy_v2")?,
                cu_event_create: symbol(&lib, n, "cuEventCreate")?,
                cu_event_record: symbol(&lib, n, "cuEventRecord")?,
                cu_event_synchronize: symbol(&lib, n, "cuEventSynchronize")?,
                cu_event_elapsed_time: symbol(&lib, n, "cuEventElapsedTime")?,
                cu_event_destroy_v2: symbol(&lib, n, "cuEventDestroy_v2")?,
                cu_module_load_data_ex: symbol(&lib, n, "cuModuleLoadDataEx")?,
                cu_module_get_function: symbol(&lib, n, "cuModuleGetFunction")?,
                cu_module_unload: symbol(&lib, n, "cuModuleUnload")?,
                cu_launch_kernel: symbol(&lib, n, "cuLaunchKernel")?,
            }
        };
        Ok(Api { fns, _lib: ManuallyDrop::new(lib) })
    }

    /// `Ok` for `CUDA_SUCCESS`, else the error with the driver's name and description.
    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CuError> {
        if code == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.error(call, code))
        }
    }

    /// Asks the driver to name and describe `code` (works before cuInit), falling back to the
    /// table in [`error_name`].
    pub fn error(&self, call: &'static str, code: CuResult) -> CuError {
        let mut name: *const c_char = ptr::null();
        let mut text: *const c_char = ptr::null();
        // SAFETY: both calls write a pointer to a static string, or leave it null, and return
        // CUDA_ERROR_INVALID_VALUE for a code they do not know.
        let (rn, rt) =
            unsafe { ((self.fns.cu_get_error_name)(code, &mut name), (self.fns.cu_get_error_string)(code, &mut text)) };
        // SAFETY: on success the pointers are NUL-terminated static strings owned by the driver.
        let read = |r: CuResult, p: *const c_char| {
            (r == CUDA_SUCCESS && !p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let name = read(rn, name)
            .or_else(|| error_name(code).map(str::to_string))
            .unwrap_or_else(|| format!("CUresult {code}"));
        let text = read(rt, text).unwrap_or_else(|| "unknown error".to_string());
        CuError { call, code, name, text }
    }

    pub fn init(&self) -> Result<(), CuError> {
        // SAFETY: cuInit(0) takes no pointers.
        self.check("cuInit", unsafe { (self.fns.cu_init)(0) })
    }

    /// The CUDA version the driver supports, as `1000 * major + 10 * minor` (13000 for 13.0).
    pub fn driver_version(&self) -> Result<i32, CuError> {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        self.check("cuDriverGetVersion", unsafe { (self.fns.cu_driver_get_version)(&mut v) })?;
        Ok(v)
    }

    pub fn device_count(&self) -> Result<i32, CuError> {
        let mut n: c_int = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetCount", unsafe { (self.fns.cu_device_get_count)(&mut n) })?;
        Ok(n)
    }

    pub fn device(&self, ordinal: i32) -> Result<Device<'_>, CuError> {
        let mut raw: CuDevice = 0;
        // SAFETY: writes one CUdevice.
        self.check("cuDeviceGet", unsafe { (self.fns.cu_device_get)(&mut raw, ordinal) })?;
        Ok(Device { api: self, raw, ordinal })
    }
}

/// A device, by ordinal; nothing to free.
pub struct Device<'a> {
    api: &'a Api,
    raw: CuDevice,
    pub ordinal: i32,
}

impl<'a> Device<'a> {
    pub fn name(&self) -> Result<String, CuError> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the driver writes at most `len` bytes, NUL included.
        self.api.check("cuDeviceGetName", unsafe {
            (self.api.fns.cu_device_get_name)(buf.as_mut_ptr(), buf.len() as c_int, self.raw)
        })?;
        let bytes: Vec<u8> = buf.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn attribute(&self, attribute: i32) -> Result<i32, CuError> {
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        self.api.check("cuDeviceGetAttribute", unsafe {
            (self.api.fns.cu_device_get_attribute)(&mut v, attribute, self.raw)
        })?;
        Ok(v)
    }

    pub fn total_memory(&self) -> Result<usize, CuError> {
        let mut v: usize = 0;
        // SAFETY: writes one size_t.
        self.api.check("cuDeviceTotalMem_v2", unsafe { (self.api.fns.cu_device_total_mem_v2)(&mut v, self.raw) })?;
        Ok(v)
    }

    /// A new context on this device, current on the calling thread until it is dropped.
    pub fn create_context(&self) -> Result<Context<'a>, CuError> {
        let mut raw: Handle = ptr::null_mut();
        // SAFETY: writes one CUcontext; flags 0 is CU_CTX_SCHED_AUTO.
        self.api.check("cuCtxCreate_v2", unsafe { (self.api.fns.cu_ctx_create_v2)(&mut raw, 0, self.raw) })?;
        Ok(Context { api: self.api, raw })
    }
}

/// A CUDA context, destroyed when dropped (which frees whatever it still holds on the device).
pub struct Context<'a> {
    api: &'a Api,
    raw: Handle,
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cuCtxCreate_v2 and everything made in it borrowed it, so is gone.
        let r = unsafe { (self.api.fns.cu_ctx_destroy_v2)(self.raw) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.api.error("cuCtxDestroy_v2", r), "destroying the CUDA context");
        }
    }
}

impl<'a> Context<'a> {
    pub fn api(&self) -> &'a Api {
        self.api
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CuError> {
        self.api.check(call, code)
    }

    /// Waits for everything queued in the context.
    pub fn synchronize(&self) -> Result<(), CuError> {
        // SAFETY: no arguments.
        self.check("cuCtxSynchronize", unsafe { (self.api.fns.cu_ctx_synchronize)() })
    }

    /// Free and total device memory, in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), CuError> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two size_t.
        self.check("cuMemGetInfo_v2", unsafe { (self.api.fns.cu_mem_get_info_v2)(&mut free, &mut total) })?;
        Ok((free, total))
    }

    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer<'_>, CuError> {
        let mut ptr: CuDevicePtr = 0;
        // SAFETY: writes one CUdeviceptr.
        self.check("cuMemAlloc_v2", unsafe { (self.api.fns.cu_mem_alloc_v2)(&mut ptr, bytes) })?;
        Ok(DeviceBuffer { ctx: self, ptr, len: bytes })
    }

    /// Page-locked host memory, zeroed.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuffer<'_>, CuError> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: writes one pointer.
        self.check("cuMemAllocHost_v2", unsafe { (self.api.fns.cu_mem_alloc_host_v2)(&mut p, bytes) })?;
        if p.is_null() && bytes > 0 {
            return Err(CuError::offline("cuMemAllocHost_v2", CUDA_ERROR_OUT_OF_MEMORY, "returned a null pointer"));
        }
        let buf = PinnedBuffer { ctx: self, ptr: p.cast(), len: bytes };
        if bytes > 0 {
            // SAFETY: `bytes` bytes of host memory were just allocated at `p`; zeroing them makes
            // the slices handed out below initialized memory.
            unsafe { ptr::write_bytes(buf.ptr, 0, bytes) };
        }
        Ok(buf)
    }

    pub fn stream(&self) -> Result<Stream<'_>, CuError> {
        let mut raw: Handle = ptr::null_mut();
        // SAFETY: writes one CUstream; flags 0 is CU_STREAM_DEFAULT.
        self.check("cuStreamCreate", unsafe { (self.api.fns.cu_stream_create)(&mut raw, 0) })?;
        Ok(Stream { ctx: self, raw })
    }

    pub fn event(&self) -> Result<Event<'_>, CuError> {
        let mut raw: Handle = ptr::null_mut();
        // SAFETY: writes one CUevent; flags 0 is CU_EVENT_DEFAULT (with timing).
        self.check("cuEventCreate", unsafe { (self.api.fns.cu_event_create)(&mut raw, 0) })?;
        Ok(Event { ctx: self, raw })
    }

    /// Copies `src` into the start of `dst` (synchronous, from pageable memory).
    pub fn copy_to_device(&self, dst: &DeviceBuffer<'_>, src: &[u8]) -> Result<(), CuError> {
        if src.len() > dst.len {
            return Err(CuError::offline(
                "cuMemcpyHtoD_v2",
                CUDA_ERROR_INVALID_VALUE,
                "source larger than destination",
            ));
        }
        // SAFETY: both ranges are inside live allocations (checked above).
        self.check("cuMemcpyHtoD_v2", unsafe {
            (self.api.fns.cu_memcpy_htod_v2)(dst.ptr, src.as_ptr().cast(), src.len())
        })
    }

    /// Fills `dst` from the start of `src` (synchronous, into pageable memory).
    pub fn copy_to_host(&self, dst: &mut [u8], src: &DeviceBuffer<'_>) -> Result<(), CuError> {
        if dst.len() > src.len {
            return Err(CuError::offline(
                "cuMemcpyDtoH_v2",
                CUDA_ERROR_INVALID_VALUE,
                "destination larger than source",
            ));
        }
        // SAFETY: both ranges are inside live allocations (checked above); the call returns when
        // the bytes are in `dst`.
        self.check("cuMemcpyDtoH_v2", unsafe {
            (self.api.fns.cu_memcpy_dtoh_v2)(dst.as_mut_ptr().cast(), src.ptr, dst.len())
        })?;
        Ok(())
    }

    /// Copies `bytes` from the start of `src` to the start of `dst`, and waits for the copy.
    pub fn copy_device(&self, dst: &DeviceBuffer<'_>, src: &DeviceBuffer<'_>, bytes: usize) -> Result<(), CuError> {
        if bytes > dst.len || bytes > src.len {
            return Err(CuError::offline("cuMemcpyDtoD_v2", CUDA_ERROR_INVALID_VALUE, "copy larger than its buffers"));
        }
        // SAFETY: both ranges are inside live device allocations (checked above).
        self.check("cuMemcpyDtoD_v2", unsafe { (self.api.fns.cu_memcpy_dtod_v2)(dst.ptr, src.ptr, bytes) })?;
        // Device-to-device copies may return before they finish.
        self.synchronize()
    }

    /// JIT-compiles `ptx` (PTX text) into a module. On failure the error comes with the JIT's
    /// error log; on success with its info log.
    pub fn load_ptx(&self, ptx: &str) -> Result<(Module<'_>, String), (CuError, String)> {
        let image = CString::new(ptx).map_err(|_| {
            (CuError::offline("cuModuleLoadDataEx", CUDA_ERROR_INVALID_VALUE, "PTX contains NUL"), String::new())
        })?;
        let mut error_log = vec![0u8; JIT_LOG_BYTES];
        let mut info_log = vec![0u8; JIT_LOG_BYTES];
        let mut options: [CuJitOption; 4] = [
            CU_JIT_ERROR_LOG_BUFFER,
            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
            CU_JIT_INFO_LOG_BUFFER,
            CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        ];
        // Sizes are passed in the pointer-sized slot itself, as cuda.h says.
        let mut values: [*mut c_void; 4] = [
            error_log.as_mut_ptr().cast(),
            ptr::without_provenance_mut(error_log.len()),
            info_log.as_mut_ptr().cast(),
            ptr::without_provenance_mut(info_log.len()),
        ];
        let mut raw: Handle = ptr::null_mut();
        // SAFETY: `image` is NUL-terminated PTX; the option arrays have 4 entries each; the log
        // buffers are as large as the sizes say and live until after the call; the driver writes
        // the logs' used sizes back into `values`, which is mutable and ours.
        let r = unsafe {
            (self.api.fns.cu_module_load_data_ex)(
                &mut raw,
                image.as_ptr().cast(),
                options.len() as c_uint,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        let text = |buf: &[u8]| {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).trim().to_string()
        };
        match self.check("cuModuleLoadDataEx", r) {
            Ok(()) => Ok((Module { ctx: self, raw }, text(&info_log))),
            Err(e) => Err((e, text(&error_log))),
        }
    }
}

/// Device memory, freed when dropped.
pub struct DeviceBuffer<'c> {
    ctx: &'c Context<'c>,
    ptr: CuDevicePtr,
    len: usize,
}

impl DeviceBuffer<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAlloc_v2; every copy and launch that used it has been waited
        // for (the methods that queue work wait before returning).
        let r = unsafe { (self.ctx.api.fns.cu_mem_free_v2)(self.ptr) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuMemFree_v2", r), "freeing device memory");
        }
    }
}

/// Page-locked host memory, freed when dropped.
pub struct PinnedBuffer<'c> {
    ctx: &'c Context<'c>,
    ptr: *mut u8,
    len: usize,
}

impl PinnedBuffer<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `len` initialized (zeroed at allocation) bytes at `ptr`, owned by this value;
        // no device work touches them while this borrow lives (copies wait before returning).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAllocHost_v2, and no copy using it is in flight.
        let r = unsafe { (self.ctx.api.fns.cu_mem_free_host)(self.ptr.cast()) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuMemFreeHost", r), "freeing pinned host memory");
        }
    }
}

/// A CUDA event (with timing), destroyed when dropped.
pub struct Event<'c> {
    ctx: &'c Context<'c>,
    raw: Handle,
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cuEventCreate.
        let r = unsafe { (self.ctx.api.fns.cu_event_destroy_v2)(self.raw) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuEventDestroy_v2", r), "destroying a CUDA event");
        }
    }
}

/// One copy for [`Stream::timed_copy`]: which way, between which buffers.
pub enum Transfer<'b, 'c> {
    HostToDevice { dst: &'b DeviceBuffer<'c>, src: &'b PinnedBuffer<'c> },
    DeviceToHost { dst: &'b mut PinnedBuffer<'c>, src: &'b DeviceBuffer<'c> },
    DeviceToDevice { dst: &'b DeviceBuffer<'c>, src: &'b DeviceBuffer<'c> },
}

/// A CUDA stream, waited for and destroyed when dropped.
pub struct Stream<'c> {
    ctx: &'c Context<'c>,
    raw: Handle,
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cuStreamCreate; waiting first means nothing queued on it outlives
        // the buffers it uses.
        let r = unsafe { (self.ctx.api.fns.cu_stream_synchronize)(self.raw) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuStreamSynchronize", r), "waiting for a CUDA stream");
        }
        // SAFETY: as above.
        let r = unsafe { (self.ctx.api.fns.cu_stream_destroy_v2)(self.raw) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuStreamDestroy_v2", r), "destroying a CUDA stream");
        }
    }
}

impl<'c> Stream<'c> {
    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CuError> {
        self.ctx.api.check(call, code)
    }

    fn synchronize(&self) -> Result<(), CuError> {
        // SAFETY: `raw` is a live stream.
        self.check("cuStreamSynchronize", unsafe { (self.ctx.api.fns.cu_stream_synchronize)(self.raw) })
    }

    /// Records `start`, queues what `work` queues, records `end`, waits for `end`, and returns the
    /// GPU time between the two events in milliseconds. Whatever happens, nothing queued is still
    /// running when this returns.
    fn timed(
        &self,
        start: &Event<'_>,
        end: &Event<'_>,
        work: impl FnOnce() -> Result<(), CuError>,
    ) -> Result<f32, CuError> {
        let result = (|| {
            let f = &self.ctx.api.fns;
            // SAFETY: live event and stream, made in the current context.
            self.check("cuEventRecord", unsafe { (f.cu_event_record)(start.raw, self.raw) })?;
            work()?;
            // SAFETY: as above.
            self.check("cuEventRecord", unsafe { (f.cu_event_record)(end.raw, self.raw) })?;
            // SAFETY: as above.
            self.check("cuEventSynchronize", unsafe { (f.cu_event_synchronize)(end.raw) })?;
            let mut ms: f32 = 0.0;
            // SAFETY: writes one float; both events have completed.
            self.check("cuEventElapsedTime", unsafe { (f.cu_event_elapsed_time)(&mut ms, start.raw, end.raw) })?;
            Ok(ms)
        })();
        if result.is_err() {
            // Work may have been queued before the failure: let it finish before the caller frees
            // its buffers. A failure here is already reported through `result`.
            let _ = self.synchronize();
        }
        result
    }

    /// Copies `bytes` bytes as `copy` says (asynchronously on this stream, between events) and
    /// returns the GPU time it took in milliseconds, once it is done.
    pub fn timed_copy(
        &self,
        copy: Transfer<'_, '_>,
        bytes: usize,
        start: &Event<'_>,
        end: &Event<'_>,
    ) -> Result<f32, CuError> {
        let f = &self.ctx.api.fns;
        let too_big = |call| CuError::offline(call, CUDA_ERROR_INVALID_VALUE, "copy larger than its buffers");
        match copy {
            Transfer::HostToDevice { dst, src } => {
                if bytes > dst.len || bytes > src.len {
                    return Err(too_big("cuMemcpyHtoDAsync_v2"));
                }
                self.timed(start, end, || {
                    // SAFETY: both ranges are inside live allocations, and `timed` waits for the
                    // copy before the borrows end.
                    self.check("cuMemcpyHtoDAsync_v2", unsafe {
                        (f.cu_memcpy_htod_async_v2)(dst.ptr, src.ptr.cast_const().cast(), bytes, self.raw)
                    })
                })
            }
            Transfer::DeviceToHost { dst, src } => {
                if bytes > dst.len || bytes > src.len {
                    return Err(too_big("cuMemcpyDtoHAsync_v2"));
                }
                self.timed(start, end, || {
                    // SAFETY: as above; `dst` is borrowed mutably, so nothing reads it meanwhile.
                    self.check("cuMemcpyDtoHAsync_v2", unsafe {
                        (f.cu_memcpy_dtoh_async_v2)(dst.ptr.cast(), src.ptr, bytes, self.raw)
                    })
                })
            }
            Transfer::DeviceToDevice { dst, src } => {
                if bytes > dst.len || bytes > src.len {
                    return Err(too_big("cuMemcpyDtoDAsync_v2"));
                }
                self.timed(start, end, || {
                    // SAFETY: as above.
                    self.check("cuMemcpyDtoDAsync_v2", unsafe {
                        (f.cu_memcpy_dtod_async_v2)(dst.ptr, src.ptr, bytes, self.raw)
                    })
                })
            }
        }
    }
}

/// A JIT-compiled module, unloaded when dropped.
pub struct Module<'c> {
    ctx: &'c Context<'c>,
    raw: Handle,
}

impl Drop for Module<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cuModuleLoadDataEx; launches from it have been waited for.
        let r = unsafe { (self.ctx.api.fns.cu_module_unload)(self.raw) };
        if r != CUDA_SUCCESS {
            tracing::warn!(error = %self.ctx.api.error("cuModuleUnload", r), "unloading a CUDA module");
        }
    }
}

impl<'c> Module<'c> {
    pub fn function(&self, name: &str) -> Result<Function<'_, 'c>, CuError> {
        let cname = CString::new(name)
            .map_err(|_| CuError::offline("cuModuleGetFunction", CUDA_ERROR_INVALID_VALUE, "name contains NUL"))?;
        let mut raw: Handle = ptr::null_mut();
        // SAFETY: writes one CUfunction; `cname` is NUL-terminated.
        self.ctx.api.check("cuModuleGetFunction", unsafe {
            (self.ctx.api.fns.cu_module_get_function)(&mut raw, self.raw, cname.as_ptr())
        })?;
        Ok(Function { module: self, raw })
    }
}

/// A kernel in a [`Module`]; nothing to free (it goes with the module).
pub struct Function<'m, 'c> {
    module: &'m Module<'c>,
    raw: Handle,
}

impl Function<'_, '_> {
    /// Launches a kernel whose parameters are `(const u32 *in, u32 *out, u32 n)`, like the step's
    /// `kernel.ptx`, over `n` elements in blocks of `block` threads, between events on `stream`,
    /// waits for it, and returns its GPU time in milliseconds.
    ///
    /// The function must have exactly that signature: the driver cannot check it, and a kernel
    /// that reads its parameters differently reads whatever they point to.
    pub fn launch_map_u32(
        &self,
        stream: &Stream<'_>,
        input: &DeviceBuffer<'_>,
        output: &DeviceBuffer<'_>,
        n: u32,
        block: u32,
        (start, end): (&Event<'_>, &Event<'_>),
    ) -> Result<f32, CuError> {
        let bytes = n as usize * 4;
        if block == 0 || bytes > input.len || bytes > output.len {
            return Err(CuError::offline(
                "cuLaunchKernel",
                CUDA_ERROR_INVALID_VALUE,
                "buffers smaller than n elements",
            ));
        }
        let grid = n.div_ceil(block);
        let api = self.module.ctx.api;
        stream.timed(start, end, || {
            let (mut a, mut b, mut n) = (input.ptr, output.ptr, n);
            let mut params: [*mut c_void; 3] =
                [ptr::addr_of_mut!(a).cast(), ptr::addr_of_mut!(b).cast(), ptr::addr_of_mut!(n).cast()];
            // SAFETY: `params` points at one value per kernel parameter, of the parameter's type
            // (u64, u64, u32; the driver copies them at launch); the kernel touches `n` u32s of
            // each buffer, which are that large (checked above); `timed` waits for the kernel
            // before the buffers' borrows end.
            api.check("cuLaunchKernel", unsafe {
                (api.fns.cu_launch_kernel)(
                    self.raw,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    0,
                    stream.raw,
                    params.as_mut_ptr(),
                    ptr::null_mut(),
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_codes() {
        assert_eq!(error_name(0), Some("CUDA_SUCCESS"));
        assert_eq!(error_name(CUDA_ERROR_NO_DEVICE), Some("CUDA_ERROR_NO_DEVICE"));
        assert_eq!(error_name(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH), Some("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"));
        assert_eq!(error_name(CUDA_ERROR_UNSUPPORTED_PTX_VERSION), Some("CUDA_ERROR_UNSUPPORTED_PTX_VERSION"));
        assert_eq!(error_name(CUDA_ERROR_INVALID_PTX), Some("CUDA_ERROR_INVALID_PTX"));
        assert_eq!(error_name(CUDA_ERROR_JIT_COMPILER_NOT_FOUND), Some("CUDA_ERROR_JIT_COMPILER_NOT_FOUND"));
        assert_eq!(error_name(CUDA_ERROR_STUB_LIBRARY), Some("CUDA_ERROR_STUB_LIBRARY"));
        assert_eq!(error_name(999), Some("CUDA_ERROR_UNKNOWN"));
        assert_eq!(error_name(12345), None);
    }

    #[test]
    fn offline_errors_read_like_the_drivers() {
        let e = CuError::offline("cuInit", CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected");
        assert_eq!(e.to_string(), "cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected");
        assert_eq!(CuError::offline("x", 4242, "?").name, "CUresult 4242");
    }

    #[test]
    fn load_errors_read_well() {
        let e = LoadError::Open { name: "libcuda.so.1".into(), error: "cannot open shared object file".into() };
        assert_eq!(e.to_string(), "libcuda.so.1 not found (cannot open shared object file)");
        let e = LoadError::Symbol { name: "libm.so.6".into(), symbol: "cuInit", error: "undefined symbol".into() };
        assert!(e.to_string().contains("libm.so.6 has no cuInit"), "{e}");
    }
}
