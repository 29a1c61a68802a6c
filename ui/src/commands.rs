//! The commands the web frontend may invoke (`invoke("<name>")` from JavaScript), and the
//! types they return. Every command here must also be listed in `crate::configure`.
//!
//! They live in their own module because `#[tauri::command]` defines helper macros next to each
//! command, which clash when a `pub` command sits at the crate root.

use serde::{Deserialize, Serialize};
use tauri::{PackageInfo, Runtime};

/// The application's name and version as the running app knows them: the name is
/// `productName` from `tauri.conf.json`, the version is the crate's (the workspace version),
/// because the config deliberately sets none of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// Human-readable product name, e.g. "Outpost Console".
    pub name: String,
    /// Semantic version of this build.
    pub version: String,
}

impl AppInfo {
    /// Reads the name and version out of Tauri's package info.
    #[must_use]
    pub fn from_package(package: &PackageInfo) -> Self {
        Self { name: package.name.clone(), version: package.version.to_string() }
    }
}

/// Command `app_info`: the name and version of the running console, for the frontend's header
/// and for bug reports.
#[tauri::command]
#[must_use]
pub fn app_info<R: Runtime>(app: tauri::AppHandle<R>) -> AppInfo {
    AppInfo::from_package(app.package_info())
}
