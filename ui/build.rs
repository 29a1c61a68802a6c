//! Build script: lets `tauri-build` read `tauri.conf.json`, check the icons and capabilities,
//! and prepare what `tauri::generate_context!` embeds into the binary.

fn main() {
    tauri_build::build();
}
