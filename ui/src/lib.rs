//! Outpost Console: the native side of the desktop app (Tauri 2).
//!
//! This crate owns the shell around the web frontend (Svelte + TypeScript + Vite in
//! `frontend/`, built into `dist/`): it builds the Tauri application from `tauri.conf.json`
//! (one window, the embedded frontend, the capabilities in `capabilities/`) and registers the
//! commands the frontend may invoke ([`commands`]), thin wrappers over the control crate's API
//! client. Their TypeScript bindings (`frontend/src/lib/bindings.ts`) are generated from the
//! Rust signatures by tauri-specta ([`specta_builder`]); a test fails when the committed file
//! is stale.
//!
//! - [`commands`]: connect (remote or local), fleet, models, drift, audit, rollouts.
//! - [`error`]: [`ConsoleError`], the tagged error every command returns.
//! - [`settings`]: the remembered URL, and the token in the OS keyring.
//! - [`local`]: local mode, an embedded control server in the console process.

pub mod commands;
pub mod error;
pub mod local;
pub mod settings;

pub use commands::AppInfo;
pub use error::{ConsoleError, ErrorKind};

use tauri::{Builder, Context, Manager, Runtime};

/// Where the generated TypeScript bindings live, relative to the crate.
pub const BINDINGS_PATH: &str = "frontend/src/lib/bindings.ts";

/// The context generated from `tauri.conf.json` at compile time: config, embedded frontend,
/// icon, capabilities and package info.
#[must_use]
pub fn context<R: Runtime>() -> Context<R> {
    tauri::generate_context!()
}

/// Every command, registered once: the invoke handler and the TypeScript bindings come from
/// this list, so a command cannot be callable without a binding or the other way round.
#[must_use]
pub fn specta_builder<R: Runtime>() -> tauri_specta::Builder<R> {
    use commands::*;
    tauri_specta::Builder::<R>::new()
        // The server's JSON documents pass through as `serde_json::Value`; JSON numbers are
        // JavaScript numbers on arrival anyway.
        .dangerously_cast_bigints_to_number()
        // One TypeScript type per Rust type (not separate serialize and deserialize shapes).
        .disable_serde_phases()
        .commands(tauri_specta::collect_commands![
            app_info,
            connection_info,
            connect,
            connect_local,
            disconnect,
            forget_token,
            list_devices,
            show_device,
            list_models,
            show_model,
            show_model_version,
            aggregates,
            drift,
            drift_overview,
            drift_alerts,
            review_drift_alert,
            request_retrain,
            audit_events,
            export_audit,
            verify_audit_export,
            list_rollouts,
            show_rollout,
            create_rollout,
            approve_rollout,
            rollout_action,
        ])
}

/// The TypeScript bindings as generated from the current Rust code.
///
/// # Errors
///
/// When specta cannot express a type in TypeScript.
pub fn render_bindings() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("outpost-console-bindings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("bindings.ts");
    specta_builder::<tauri::Wry>()
        .export(
            specta_typescript::Typescript::default()
                .header("// Generated from the Rust commands by tauri-specta: do not edit.\n// Regenerate: OUTPOST_UPDATE_BINDINGS=1 cargo test -p outpost-console bindings\n"),
            &path,
        )
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    text
}

/// Registers everything the console adds to a Tauri builder: its state and commands. Shared
/// by [`run`] and the tests, so the tests exercise the same wiring the app runs with.
#[must_use]
pub fn configure<R: Runtime>(builder: Builder<R>, context: &Context<R>) -> Builder<R> {
    let specta = specta_builder::<R>();
    builder
        .manage(commands::ConsoleState::new(AppInfo::from_package(context.package_info())))
        .setup(|app| {
            let paths = app.path();
            let folders = commands::Folders {
                config: paths.app_config_dir().ok(),
                data: paths.app_data_dir().ok(),
            };
            app.state::<commands::ConsoleState>().set_folders(folders);
            Ok(())
        })
        .invoke_handler(specta.invoke_handler())
}

/// Builds the console and runs its event loop until the last window closes.
///
/// # Errors
///
/// Whatever Tauri reports when it cannot create the application or its window (for example
/// no display to connect to).
pub fn run() -> tauri::Result<()> {
    let context = context();
    configure(Builder::default(), &context).run(context)
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
        assert_eq!(config["build"]["frontendDist"], "dist");
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
    fn the_frontend_sources_and_its_build_are_where_the_config_says() {
        let config = config();
        let dist = config["build"]["frontendDist"].as_str().expect("frontendDist is a path");
        let dist: PathBuf = crate_dir().join(dist);
        let html = std::fs::read_to_string(dist.join("index.html")).expect("index.html readable");
        assert!(html.contains("<title>Outpost Console</title>"), "{html}");
        let source = crate_dir().join("frontend");
        for file in ["index.html", "src/main.ts", "src/App.svelte", "src/lib/bindings.ts"] {
            assert!(source.join(file).is_file(), "{file} missing in {source:?}");
        }
    }

    /// The committed TypeScript bindings are what the Rust commands generate now. Run with
    /// `OUTPOST_UPDATE_BINDINGS=1` to rewrite them after changing a command.
    #[test]
    fn bindings_are_current() {
        let generated = render_bindings().expect("bindings generate");
        let path = crate_dir().join(BINDINGS_PATH);
        if std::env::var_os("OUTPOST_UPDATE_BINDINGS").is_some() {
            std::fs::write(&path, &generated).expect("bindings written");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `OUTPOST_UPDATE_BINDINGS=1 cargo test -p outpost-console \
             bindings` and commit the result",
            path.display()
        );
        for command in
            ["connect", "connectLocal", "listDevices", "reviewDriftAlert", "approveRollout"]
        {
            assert!(generated.contains(&format!("\t{command}: (")), "{command} in bindings");
        }
        assert!(generated.contains("export type ConsoleError = {"), "the error type is exported");
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
        let context = context();
        let app = configure(mock_builder(), &context)
            .build(context)
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
