//! Outpost Console: the native side of the desktop app (Tauri 2).
//!
//! This crate owns the shell around the web frontend in `ui/frontend/`: it builds the Tauri
//! application from `tauri.conf.json` (one window, the embedded frontend, the capabilities in
//! `capabilities/`) and wires up the commands the frontend may invoke (defined in
//! [`commands`]). Today that is one command, [`commands::app_info`]; the console views (fleet,
//! rollouts, approvals, drift review, audit export) arrive together with the control server's
//! HTTPS API and will be added as commands that talk to it.

pub mod commands;

pub use commands::AppInfo;

use tauri::{Builder, Context, Runtime};

/// The context generated from `tauri.conf.json` at compile time: config, embedded frontend,
/// icon, capabilities and package info.
#[must_use]
pub fn context<R: Runtime>() -> Context<R> {
    tauri::generate_context!()
}

/// Registers everything the console adds to a Tauri builder (today: its commands). Shared by
/// [`run`] and the tests, so the tests exercise the same wiring the app runs with.
#[must_use]
pub fn configure<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder.invoke_handler(tauri::generate_handler![commands::app_info])
}

/// Builds the console and runs its event loop until the last window closes.
///
/// # Errors
///
/// Whatever Tauri reports when it cannot create the application or its window (for example
/// no display to connect to).
pub fn run() -> tauri::Result<()> {
    configure(Builder::default()).run(context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use tauri::Manager;
    use tauri::test::{INVOKE_KEY, MockRuntime, get_ipc_response, mock_builder};

    fn crate_dir() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn config() -> serde_json::Value {
        let path = crate_dir().join("tauri.conf.json");
        let text = std::fs::read_to_string(&path).expect("tauri.conf.json is readable");
        serde_json::from_str(&text).expect("tauri.conf.json is valid JSON")
    }

    #[test]
    fn config_names_the_app_and_points_at_the_frontend() {
        let config = config();
        assert_eq!(config["productName"], "Outpost Console");
        assert_eq!(config["identifier"], "org.outpost.console");
        assert_eq!(config["build"]["frontendDist"], "frontend");
        assert_eq!(config["bundle"]["active"], false);
        assert!(
            config.get("version").is_none(),
            "the version must come from the workspace, not from tauri.conf.json"
        );

        let windows = config["app"]["windows"].as_array().expect("app.windows is a list");
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0]["title"], "Outpost Console");
        assert_eq!(windows[0]["width"], 1280);
        assert_eq!(windows[0]["height"], 800);
    }

    #[test]
    fn frontend_files_exist_and_the_page_is_honest() {
        let config = config();
        let dist = config["build"]["frontendDist"].as_str().expect("frontendDist is a path");
        let dist: PathBuf = crate_dir().join(dist);
        for file in ["index.html", "style.css", "main.js"] {
            assert!(dist.join(file).is_file(), "{file} missing in {dist:?}");
        }
        let html = std::fs::read_to_string(dist.join("index.html")).expect("index.html readable");
        assert!(html.contains("<title>Outpost Console</title>"));
        assert!(html.contains("control server API"));
    }

    #[test]
    fn icon_is_an_rgba_png() {
        let bytes = std::fs::read(crate_dir().join("icons/icon.png")).expect("icon readable");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(bytes[24], 8, "8 bits per channel");
        assert_eq!(bytes[25], 6, "colour type 6 = RGBA");
    }

    #[test]
    fn generated_context_carries_product_name_and_crate_version() {
        let context: Context<MockRuntime> = context();
        let info = AppInfo::from_package(context.package_info());
        assert_eq!(info.name, "Outpost Console");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(context.config().identifier, "org.outpost.console");
    }

    /// Sends `cmd` with an empty body through the IPC layer of an app built from the real
    /// config and capabilities, as the frontend's `invoke(cmd)` would.
    fn invoke(cmd: &str) -> Result<tauri::ipc::InvokeResponseBody, serde_json::Value> {
        let app = configure(mock_builder())
            .build(context())
            .expect("the console builds on the mock runtime");
        let webview = match app.get_webview_window("main") {
            Some(window) => window,
            None => tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
                .build()
                .expect("main window on the mock runtime"),
        };
        let request = tauri::webview::InvokeRequest {
            cmd: cmd.into(),
            callback: tauri::ipc::CallbackFn(0),
            error: tauri::ipc::CallbackFn(1),
            url: "tauri://localhost".parse().expect("static URL parses"),
            body: tauri::ipc::InvokeBody::default(),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(&webview, request)
    }

    #[test]
    fn app_info_is_registered_and_answers_over_ipc() {
        let info: AppInfo = invoke("app_info")
            .expect("app_info succeeds")
            .deserialize()
            .expect("app_info returns an AppInfo");
        assert_eq!(
            info,
            AppInfo { name: "Outpost Console".into(), version: env!("CARGO_PKG_VERSION").into() }
        );
    }

    #[test]
    fn unknown_commands_are_refused() {
        assert!(invoke("no_such_command").is_err());
    }
}
